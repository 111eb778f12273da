//! Webhook benchmark: what webhooks cost the HTTP publish path, how fast deliveries leave,
//! and a sanity check of the default per-endpoint rate limit.
//!
//! ```sh
//! cargo bench --bench webhooks -- [--messages M] [--concurrency C] [--limit-messages L]
//!                                 [--ws-member] [--only 1a,2b,…]
//! scripts/bench-webhooks.sh [same arguments]     # also tees to target/bench/webhooks.txt
//! ```
//!
//! Everything runs in this process and on 127.0.0.1 only:
//!
//! - a fresh broker per scenario, in its own thread and actix system (`Broker::start` and
//!   `server::serve` on `127.0.0.1:0`), with its outbox in a temporary directory;
//! - a receiver per scenario (actix-web on `127.0.0.1:0`, one worker, its own thread) that
//!   answers every `POST /hook/{endpoint}` with 204 and records the arrival time, the
//!   event's `data.seq` and the TCP peer port;
//! - C awc clients on the main thread that publish M messages in total with
//!   `POST /api/rooms/{room}/publish` (each client sends its next message as soon as the
//!   previous one is answered, so C messages are in flight at any time);
//! - with `--ws-member`, one WebSocket session (main thread) joined to the room that reads
//!   every message. Without it the room has no members, as when a backend only publishes
//!   over HTTP.
//!
//! Scenarios (one row each in the table printed at the end):
//!
//! - 1 Publish throughput and latency (p50/p99 of the publish response time): (1a) no
//!   webhook endpoint; (1b) one endpoint subscribed to `room.message` in the room,
//!   `synchronous = "normal"`: every answer waits for the outbox commit; (1c) the same with
//!   `synchronous = "full"`. The endpoint keeps the default rate limit, so few deliveries
//!   are made meanwhile and the rows measure the commit on the publish path.
//! - 2 End to end: from the first publish until the receiver has all deliveries, with
//!   `rate_limit_per_s = 1_000_000` (the limiter is never the bottleneck), with 1 (2a) and
//!   4 (2b) endpoints (each its own receiver path). Latency is arrival − the publish's
//!   answer, per delivery.
//! - 3 Default limit: L messages to one endpoint at the default 10/s: the deliveries are
//!   spaced 100 ms apart, so L = 50 takes about 4.9 s from the first arrival to the last.
//!
//! Below the table, per scenario: the publish rate and p50 over the first and the last tenth
//! of the messages (a drift shows costs that grow during the run), and per endpoint the gap
//! between consecutive arrivals, the connections used and any out-of-order arrival.
//!
//! Every loop is bounded: publishing stops after M messages, and every wait for deliveries
//! gives up after [`DELIVERY_WAIT`] and reports what did arrive.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use switchboard::config::{Config, WebhookEndpointConfig, WebhookMode};
use switchboard::webhooks::outbox::Synchronous;
use switchboard::{server, Broker};
use tokio::sync::{oneshot, watch};

/// The API key the publishers use.
const API_KEY: &str = "webhook-bench-api-key-0123456789";
/// The broker's HS256 secret (signs the `--ws-member` token).
const SECRET: &str = "webhook-bench-hs256-secret-0123456789";
/// The measured room; endpoints subscribe to this room only.
const ROOM: &str = "bench:webhooks";
/// Warm-up traffic goes here, so it raises no webhook event.
const WARMUP_ROOM: &str = "bench:warmup";
/// Publishes per client before a scenario is measured (connections open, code paths hot).
const WARMUP_PER_CLIENT: usize = 20;
/// A per-endpoint rate limit that never binds.
const UNLIMITED: u32 = 1_000_000;
/// Longest wait for the expected deliveries; a scenario that hits it reports what arrived.
const DELIVERY_WAIT: Duration = Duration::from_secs(120);
/// Longest wait for a broker or receiver to start or stop.
const START_STOP_WAIT: Duration = Duration::from_secs(30);

// ---- arguments ----

struct Args {
    /// M: messages published per scenario of sections 1 and 2.
    messages: usize,
    /// C: concurrent publishing clients.
    concurrency: usize,
    /// L: messages of the default-limit check.
    limit_messages: usize,
    /// Keep one WebSocket session joined to the room during every scenario.
    ws_member: bool,
    /// Scenario ids to run (`1a`, `2b`, …); empty: all.
    only: Vec<String>,
}

const USAGE: &str = "usage: cargo bench --bench webhooks -- [--messages M] [--concurrency C] [--limit-messages L] [--ws-member] [--only IDS]
  -m, --messages M        messages per scenario in sections 1 and 2 (default 10000)
  -c, --concurrency C     concurrent publishing HTTP clients (default 16)
  -l, --limit-messages L  messages of the default 10/s limit check (default 50)
  --ws-member             keep one WebSocket session joined to the room (it reads every
                          message); without it the room has no members, as for a backend
                          that only publishes over HTTP
  --only IDS              run only these scenarios, comma-separated (1a,1b,1c,2a,2b,3)";

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            messages: 10_000,
            concurrency: 16,
            limit_messages: 50,
            ws_member: false,
            only: Vec::new(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let target = match name.as_str() {
                // cargo bench passes --bench to harness = false targets.
                "--bench" => continue,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                "--ws-member" => {
                    args.ws_member = true;
                    continue;
                }
                "--only" => {
                    let ids = inline.or_else(|| it.next()).ok_or("--only needs a value")?;
                    args.only = ids.split(',').map(|id| id.trim().to_owned()).collect();
                    continue;
                }
                "-m" | "--messages" => &mut args.messages,
                "-c" | "--concurrency" => &mut args.concurrency,
                "-l" | "--limit-messages" => &mut args.limit_messages,
                other => return Err(format!("unknown argument `{other}`")),
            };
            let value = inline
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))?;
            *target = value
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name}: `{value}` is not a positive integer"))?;
        }
        Ok(args)
    }
}

// ---- the broker under test ----

/// A broker config as in dev mode, built in code: loopback on port 0, an API key, no API
/// rate limit, webhooks in development mode with 127.0.0.1 allowlisted, the outbox at
/// `outbox`, and one `room.message` endpoint per URL in `urls` (rooms: [`ROOM`]).
fn broker_config(
    outbox: &Path,
    sync: Synchronous,
    urls: &[String],
    rate_limit_per_s: Option<u32>,
) -> Config {
    let mut c = Config::default();
    c.server.bind = "127.0.0.1:0".into();
    c.server.shutdown_timeout = Duration::from_secs(2);
    c.auth.hs256_secret = SECRET.into();
    c.api.keys = vec![API_KEY.into()];
    c.api.requests_per_second = 0;
    let w = &mut c.webhooks;
    w.mode = WebhookMode::Development;
    w.allow = vec!["127.0.0.1/32".parse().expect("a CIDR")];
    w.outbox_path = outbox.to_str().expect("a UTF-8 temp path").to_owned();
    w.synchronous = sync;
    for (i, url) in urls.iter().enumerate() {
        w.endpoints.insert(
            format!("bench-{i}"),
            WebhookEndpointConfig {
                url: url.clone(),
                secret: None,
                events: vec!["room.message".into()],
                rooms: vec![ROOM.into()],
                rate_limit_per_s,
            },
        );
    }
    c
}

/// A broker in its own thread and actix system.
struct BenchBroker {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    stopped: oneshot::Receiver<()>,
    /// Holds the outbox; removed when the broker is gone.
    _dir: tempfile::TempDir,
}

impl BenchBroker {
    fn start(config: Config, dir: tempfile::TempDir) -> BenchBroker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let broker = match Broker::start(config) {
                    Ok(broker) => broker,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.to_string()));
                        actix_rt::System::current().stop();
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                actix_rt::spawn(async move {
                    let served = server::serve(broker, listener, async {
                        let _ = shutdown_rx.await;
                    })
                    .await;
                    if let Err(err) = served {
                        eprintln!("broker: serve failed: {err}");
                    }
                    // Also stops the broker's arbiters (rooms, outbox, deliveries).
                    actix_rt::System::current().stop();
                });
            });
            let _ = system.run();
            let _ = stopped_tx.send(());
        });
        match ready_rx.recv_timeout(START_STOP_WAIT) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("broker did not start: {err}"),
            Err(err) => panic!("broker did not start: {err}"),
        }
        BenchBroker {
            addr,
            shutdown: Some(shutdown_tx),
            stopped: stopped_rx,
            _dir: dir,
        }
    }

    /// Graceful shutdown; waits (bounded) until the broker's system has stopped.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(START_STOP_WAIT, &mut self.stopped)
            .await
            .is_err()
        {
            eprintln!("broker: did not stop within {START_STOP_WAIT:?}");
        }
    }
}

// ---- the receiver ----

/// One webhook request as the receiver saw it.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// Which endpoint (`/hook/{endpoint}`).
    endpoint: usize,
    /// `data.seq` of the event (0 if the body could not be read).
    seq: u64,
    /// When the handler had the whole request.
    at: Instant,
    /// The sender's TCP port: distinct ports = connections used.
    peer_port: u16,
}

struct ReceiverLog {
    arrivals: Mutex<Vec<Arrival>>,
    count: watch::Sender<usize>,
}

#[derive(Deserialize)]
struct Event {
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    seq: u64,
}

async fn hook(
    req: HttpRequest,
    endpoint: web::Path<usize>,
    body: web::Bytes,
    log: web::Data<ReceiverLog>,
) -> HttpResponse {
    let at = Instant::now();
    let seq = serde_json::from_slice::<Event>(&body).map_or(0, |e| e.data.seq);
    let arrival = Arrival {
        endpoint: endpoint.into_inner(),
        seq,
        at,
        peer_port: req.peer_addr().map_or(0, |a| a.port()),
    };
    log.arrivals
        .lock()
        .expect("receiver log lock")
        .push(arrival);
    log.count.send_modify(|n| *n += 1);
    HttpResponse::NoContent().finish()
}

/// An actix-web receiver in its own thread and actix system.
struct Receiver {
    addr: SocketAddr,
    log: web::Data<ReceiverLog>,
    count: watch::Receiver<usize>,
    handle: actix_web::dev::ServerHandle,
    thread: std::thread::JoinHandle<()>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (count_tx, count_rx) = watch::channel(0usize);
        let log = web::Data::new(ReceiverLog {
            arrivals: Mutex::new(Vec::new()),
            count: count_tx,
        });
        let for_server = log.clone();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(for_server.clone())
                        .route("/hook/{endpoint}", web::post().to(hook))
                })
                .workers(1)
                .disable_signals()
                .listen(listener)
                .expect("receiver listens")
                .run();
                let _ = handle_tx.send(server.handle());
                let _ = server.await;
            });
        });
        let handle = handle_rx
            .recv_timeout(START_STOP_WAIT)
            .expect("receiver started");
        Receiver {
            addr,
            log,
            count: count_rx,
            handle,
            thread,
        }
    }

    fn url(&self, endpoint: usize) -> String {
        format!("http://{}/hook/{endpoint}", self.addr)
    }

    /// Waits until `n` requests have arrived, at most `bound`; whether they did.
    async fn wait_for(&self, n: usize, bound: Duration) -> bool {
        let mut count = self.count.clone();
        let arrived = tokio::time::timeout(bound, count.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        arrived
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.log.arrivals.lock().expect("receiver log lock").clone()
    }

    async fn stop(self) {
        self.handle.stop(false).await;
        let _ = self.thread.join();
    }
}

// ---- the WebSocket member ----

/// A WebSocket session joined to [`ROOM`] that reads (and counts) every frame it is sent
/// (`--ws-member`).
struct Member {
    stop: Option<oneshot::Sender<()>>,
    task: actix_rt::task::JoinHandle<usize>,
}

impl Member {
    async fn join(broker: SocketAddr) -> Member {
        let token = switchboard::auth::mint_hs256(
            SECRET,
            "bench-member",
            vec![ROOM.into()],
            None,
            Duration::from_secs(3600),
        )
        .expect("sign a token");
        let connect = awc::Client::new()
            .ws(format!("ws://{broker}/ws?token={token}"))
            .max_frame_size(1 << 20)
            .connect();
        let (_, mut ws) = tokio::time::timeout(START_STOP_WAIT, connect)
            .await
            .expect("WebSocket connected in time")
            .expect("WebSocket connected");
        let join = format!(r#"{{"type":"room.join","room":"{ROOM}","id":"join"}}"#);
        ws.send(ws::Message::Text(join.into()))
            .await
            .expect("send room.join");
        let joined = tokio::time::timeout(START_STOP_WAIT, async {
            while let Some(Ok(frame)) = ws.next().await {
                if let ws::Frame::Text(text) = frame {
                    let msg: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
                    if msg["type"] == "room.joined" {
                        return true;
                    }
                }
            }
            false
        })
        .await;
        assert!(matches!(joined, Ok(true)), "the member did not join {ROOM}");
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = actix_rt::spawn(async move {
            let mut frames = 0usize;
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    frame = ws.next() => match frame {
                        Some(Ok(ws::Frame::Text(_))) => frames += 1,
                        Some(Ok(ws::Frame::Ping(p))) => {
                            let _ = ws.send(ws::Message::Pong(p)).await;
                        }
                        Some(Ok(ws::Frame::Close(_)) | Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
            let _ = ws.send(ws::Message::Close(None)).await;
            frames
        });
        Member {
            stop: Some(stop_tx),
            task,
        }
    }

    /// Stops reading and closes; the number of text frames received.
    async fn leave(mut self) -> usize {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(START_STOP_WAIT, self.task).await {
            Ok(Ok(frames)) => frames,
            _ => 0,
        }
    }
}

// ---- the publishers ----

#[derive(Deserialize)]
struct PublishAck {
    seq: u64,
}

/// One publish as a client saw it.
struct Publish {
    start: Instant,
    ack: Instant,
    /// The room seq from the answer, or what went wrong.
    outcome: Result<u64, String>,
}

/// C awc clients (each keeps its own keep-alive connection) on the current thread.
struct Publishers {
    base: String,
    authorization: String,
    clients: Vec<awc::Client>,
}

/// What one run of [`Publishers::publish`] saw.
struct Load {
    publishes: Vec<Publish>,
    /// First request sent.
    first_start: Instant,
    /// Last answer received.
    last_ack: Instant,
}

impl Load {
    fn acked(&self) -> impl Iterator<Item = (&Publish, u64)> {
        self.publishes
            .iter()
            .filter_map(|p| p.outcome.as_ref().ok().map(|seq| (p, *seq)))
    }

    fn errors(&self) -> (usize, Option<&str>) {
        let mut errors = self
            .publishes
            .iter()
            .filter_map(|p| p.outcome.as_ref().err());
        let first = errors.next().map(String::as_str);
        (first.map_or(0, |_| 1 + errors.count()), first)
    }

    /// Acknowledged messages per second over first request → last answer.
    fn rate(&self) -> f64 {
        self.acked().count() as f64 / secs(self.last_ack - self.first_start)
    }

    /// Publish rate and p50 response time over the first and the last tenth of the
    /// messages (by send time): `((rate, p50 ms), (rate, p50 ms))`.
    fn tenths(&self) -> Option<((f64, f64), (f64, f64))> {
        let mut acked: Vec<&Publish> = self.acked().map(|(p, _)| p).collect();
        if acked.len() < 100 {
            return None;
        }
        acked.sort_by_key(|p| p.start);
        let tenth = acked.len() / 10;
        let figures = |part: &[&Publish]| {
            let first = part.iter().map(|p| p.start).min().expect("non-empty");
            let last = part.iter().map(|p| p.ack).max().expect("non-empty");
            let latencies = sorted(part.iter().map(|p| ms(p.ack - p.start)).collect());
            (
                part.len() as f64 / secs(last - first),
                percentile(&latencies, 50.0),
            )
        };
        Some((
            figures(&acked[..tenth]),
            figures(&acked[acked.len() - tenth..]),
        ))
    }

    /// Publish response times in ms, sorted.
    fn latencies_ms(&self) -> Vec<f64> {
        sorted(
            self.acked()
                .map(|(p, _)| ms(p.ack - p.start))
                .collect::<Vec<_>>(),
        )
    }
}

impl Publishers {
    fn new(broker: SocketAddr, concurrency: usize) -> Publishers {
        let clients = (0..concurrency)
            .map(|_| {
                awc::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .finish()
            })
            .collect();
        Publishers {
            base: format!("http://{broker}"),
            authorization: format!("Bearer {API_KEY}"),
            clients,
        }
    }

    /// Every client publishes [`WARMUP_PER_CLIENT`] messages to [`WARMUP_ROOM`].
    async fn warm_up(&self) {
        let load = self
            .publish(WARMUP_ROOM, WARMUP_PER_CLIENT * self.clients.len())
            .await;
        if let (n @ 1.., Some(first)) = load.errors() {
            panic!("{n} warm-up publishes failed, the first: {first}");
        }
    }

    /// Publishes `total` messages to `room`, each client sending its next one when the
    /// previous one is answered.
    async fn publish(&self, room: &str, total: usize) -> Load {
        let url = Rc::<str>::from(format!("{}/api/rooms/{room}/publish", self.base));
        let authorization = Rc::<str>::from(self.authorization.as_str());
        let next = Rc::new(Cell::new(0usize));
        let tasks: Vec<_> = self
            .clients
            .iter()
            .map(|client| {
                let (client, url, authorization, next) = (
                    client.clone(),
                    url.clone(),
                    authorization.clone(),
                    next.clone(),
                );
                actix_rt::spawn(async move {
                    let mut done = Vec::new();
                    loop {
                        let n = next.get();
                        if n >= total {
                            break;
                        }
                        next.set(n + 1);
                        let start = Instant::now();
                        let outcome = publish_one(&client, &url, &authorization, n).await;
                        done.push(Publish {
                            start,
                            ack: Instant::now(),
                            outcome,
                        });
                    }
                    done
                })
            })
            .collect();
        let mut publishes = Vec::with_capacity(total);
        for task in futures_util::future::join_all(tasks).await {
            publishes.extend(task.expect("publisher task"));
        }
        let first_start = publishes.iter().map(|p| p.start).min().expect("published");
        let last_ack = publishes.iter().map(|p| p.ack).max().expect("published");
        Load {
            publishes,
            first_start,
            last_ack,
        }
    }
}

async fn publish_one(
    client: &awc::Client,
    url: &str,
    authorization: &str,
    n: usize,
) -> Result<u64, String> {
    let body = format!(r#"{{"payload":{{"n":{n},"text":"switchboard webhook benchmark"}}}}"#);
    let mut response = client
        .post(url)
        .insert_header((header::AUTHORIZATION, authorization))
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .send_body(body)
        .await
        .map_err(|e| format!("publish {n}: {e}"))?;
    if response.status() != 200 {
        let text = response.body().await.unwrap_or_default();
        return Err(format!(
            "publish {n}: HTTP {}: {}",
            response.status(),
            String::from_utf8_lossy(&text)
        ));
    }
    let ack: PublishAck = response
        .json()
        .await
        .map_err(|e| format!("publish {n}: bad answer: {e}"))?;
    Ok(ack.seq)
}

// ---- statistics ----

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

/// `b − a` in ms, negative when `b` is earlier.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => ms(d),
        None => -ms(a - b),
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile of sorted values (NaN when empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---- scenarios ----

struct Scenario {
    /// Row label; it starts with the scenario id (`1a`, …, `3`).
    name: &'static str,
    endpoints: usize,
    sync: Synchronous,
    /// Per-endpoint rate limit; `None`: `webhooks.rate_limit_per_s` (default 10).
    rate_limit_per_s: Option<u32>,
    messages: usize,
    /// Wait for every delivery and report delivery figures.
    deliveries: bool,
}

/// One row of the table.
struct Row {
    name: &'static str,
    endpoints: usize,
    sync: &'static str,
    rate_limit: String,
    messages: usize,
    concurrency: usize,
    publish_rate: f64,
    publish_p50: f64,
    publish_p99: f64,
    /// Delivery figures: (arrived/expected, deliveries/s, e2e p50, e2e p99, wall s).
    delivery: Option<(String, f64, f64, f64)>,
    /// Publish-only scenarios: first request → last answer; delivery scenarios: first
    /// request → last arrival.
    wall: f64,
    notes: Vec<String>,
}

async fn run(s: &Scenario, concurrency: usize, default_rate: u32, ws_member: bool) -> Row {
    let concurrency = concurrency.min(s.messages);
    let receiver = Receiver::start();
    let urls: Vec<String> = (0..s.endpoints).map(|i| receiver.url(i)).collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = broker_config(
        &dir.path().join("outbox.db"),
        s.sync,
        &urls,
        s.rate_limit_per_s,
    );
    let broker = BenchBroker::start(config, dir);
    let publishers = Publishers::new(broker.addr, concurrency);
    publishers.warm_up().await;
    let member = match ws_member {
        true => Some(Member::join(broker.addr).await),
        false => None,
    };

    let load = publishers.publish(ROOM, s.messages).await;
    let expected = s.endpoints * load.acked().count();
    let complete = if s.deliveries {
        receiver.wait_for(expected, DELIVERY_WAIT).await
    } else {
        true
    };
    let arrivals = receiver.arrivals();
    let member_frames = match member {
        Some(member) => Some(member.leave().await),
        None => None,
    };
    broker.stop().await;
    receiver.stop().await;

    let latencies = load.latencies_ms();
    let mut notes = Vec::new();
    if let (n @ 1.., Some(first)) = load.errors() {
        notes.push(format!("{n} publishes failed, the first: {first}"));
    }
    if let Some(((rate0, p50_0), (rate9, p50_9))) = load.tenths() {
        notes.push(format!(
            "publish, first tenth of the messages: {} msgs/s, p50 {p50_0:.2} ms; last tenth: {} msgs/s, p50 {p50_9:.2} ms",
            fmt_num(rate0, 0),
            fmt_num(rate9, 0)
        ));
    }
    if let Some(frames) = member_frames {
        notes.push(format!("the WebSocket member received {frames} frames"));
    }
    let mut row = Row {
        name: s.name,
        endpoints: s.endpoints,
        sync: match s.sync {
            Synchronous::Normal => "normal",
            Synchronous::Full => "full",
        },
        rate_limit: match s.rate_limit_per_s {
            _ if s.endpoints == 0 => "-".into(),
            Some(r) => r.to_string(),
            None => format!("{default_rate} (default)"),
        },
        messages: s.messages,
        concurrency,
        publish_rate: load.rate(),
        publish_p50: percentile(&latencies, 50.0),
        publish_p99: percentile(&latencies, 99.0),
        delivery: None,
        wall: secs(load.last_ack - load.first_start),
        notes,
    };
    if s.deliveries {
        // At the default limit, check the spacing it promises.
        let limit_check = s.rate_limit_per_s.is_none().then_some(default_rate);
        delivery_figures(
            &mut row,
            &load,
            &arrivals,
            s.endpoints,
            expected,
            complete,
            limit_check,
        );
    }
    row
}

fn delivery_figures(
    row: &mut Row,
    load: &Load,
    arrivals: &[Arrival],
    endpoints: usize,
    expected: usize,
    complete: bool,
    limit_check: Option<u32>,
) {
    let acks: HashMap<u64, Instant> = load.acked().map(|(p, seq)| (seq, p.ack)).collect();
    let e2e = sorted(
        arrivals
            .iter()
            .filter_map(|a| acks.get(&a.seq).map(|ack| signed_ms(*ack, a.at)))
            .collect(),
    );
    let last = arrivals.iter().map(|a| a.at).max();
    let wall = last.map_or(f64::NAN, |t| secs(t - load.first_start));
    row.wall = wall;
    row.delivery = Some((
        format!("{}/{expected}", arrivals.len()),
        arrivals.len() as f64 / wall,
        percentile(&e2e, 50.0),
        percentile(&e2e, 99.0),
    ));
    if !complete {
        row.notes.push(format!(
            "INCOMPLETE: {} of {expected} deliveries within {DELIVERY_WAIT:?}",
            arrivals.len()
        ));
    }
    let early = e2e.iter().filter(|v| **v < 0.0).count();
    if early > 0 {
        row.notes.push(format!(
            "{early} deliveries arrived before their publish was answered (negative e2e)"
        ));
    }
    // Per endpoint: the gap between consecutive arrivals (one attempt in flight per
    // endpoint, so this is the cost of one delivery cycle), connections, order.
    let mut per_endpoint = Vec::new();
    for endpoint in 0..endpoints {
        let mine: Vec<&Arrival> = arrivals.iter().filter(|a| a.endpoint == endpoint).collect();
        let gaps = sorted(
            mine.windows(2)
                .map(|w| signed_ms(w[0].at, w[1].at))
                .collect(),
        );
        let connections: HashSet<u16> = mine.iter().map(|a| a.peer_port).collect();
        let out_of_order = mine.windows(2).filter(|w| w[1].seq <= w[0].seq).count();
        let span = match (mine.first(), mine.last()) {
            (Some(first), Some(last)) => secs(last.at - first.at),
            _ => f64::NAN,
        };
        per_endpoint.push(format!(
            "#{endpoint}: {} deliveries, {:.0}/s first→last arrival, gap p50 {:.3} ms p99 {:.3} ms, {} connection(s), {} out of order",
            mine.len(),
            mine.len().saturating_sub(1) as f64 / span,
            percentile(&gaps, 50.0),
            percentile(&gaps, 99.0),
            connections.len(),
            out_of_order
        ));
        if let (Some(limit), Some(first), Some(last), Some(min)) =
            (limit_check, mine.first(), mine.last(), gaps.first())
        {
            let expected_s = mine.len().saturating_sub(1) as f64 / f64::from(limit);
            row.notes.push(format!(
                "#{endpoint}: first→last arrival {:.3} s (at {limit}/s expected {expected_s:.3} s), first publish→first arrival {:.1} ms, smallest gap {min:.1} ms",
                (last.at - first.at).as_secs_f64(),
                signed_ms(load.first_start, first.at),
            ));
        }
    }
    row.notes.extend(per_endpoint);
}

// ---- output ----

fn fmt_num(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        return "-".into();
    }
    let s = format!("{v:.decimals$}");
    // Thousands separators for the integer part.
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| scenario | endpoints | synchronous | endpoint rate/s | M | C | publish msgs/s | publish p50 ms | publish p99 ms | deliveries | deliveries/s | e2e p50 ms | e2e p99 ms | wall s |");
    println!(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in rows {
        let (arrived, rate, p50, p99) = match &r.delivery {
            Some((arrived, rate, p50, p99)) => (
                arrived.clone(),
                fmt_num(*rate, 0),
                fmt_num(*p50, 2),
                fmt_num(*p99, 2),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.endpoints,
            if r.endpoints == 0 { "-" } else { r.sync },
            r.rate_limit,
            fmt_num(r.messages as f64, 0),
            r.concurrency,
            fmt_num(r.publish_rate, 0),
            fmt_num(r.publish_p50, 2),
            fmt_num(r.publish_p99, 2),
            arrived,
            rate,
            p50,
            p99,
            fmt_num(r.wall, 2),
        );
    }
    println!();
    for r in rows {
        for note in &r.notes {
            println!("- {}: {note}", r.name);
        }
    }
}

async fn bench(args: Args) {
    let default_rate = Config::default().webhooks.rate_limit_per_s;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let m = args.messages;
    let scenarios = [
        Scenario {
            name: "1a publish, no endpoint",
            endpoints: 0,
            sync: Synchronous::Normal,
            rate_limit_per_s: None,
            messages: m,
            deliveries: false,
        },
        Scenario {
            name: "1b publish, 1 endpoint",
            endpoints: 1,
            sync: Synchronous::Normal,
            rate_limit_per_s: None,
            messages: m,
            deliveries: false,
        },
        Scenario {
            name: "1c publish, 1 endpoint, full",
            endpoints: 1,
            sync: Synchronous::Full,
            rate_limit_per_s: None,
            messages: m,
            deliveries: false,
        },
        Scenario {
            name: "2a end to end, 1 endpoint",
            endpoints: 1,
            sync: Synchronous::Normal,
            rate_limit_per_s: Some(UNLIMITED),
            messages: m,
            deliveries: true,
        },
        Scenario {
            name: "2b end to end, 4 endpoints",
            endpoints: 4,
            sync: Synchronous::Normal,
            rate_limit_per_s: Some(UNLIMITED),
            messages: m,
            deliveries: true,
        },
        Scenario {
            name: "3 default limit",
            endpoints: 1,
            sync: Synchronous::Normal,
            rate_limit_per_s: None,
            messages: args.limit_messages,
            deliveries: true,
        },
    ];
    let started = Instant::now();
    let mut rows = Vec::new();
    let id = |s: &Scenario| s.name.split(' ').next().unwrap_or_default().to_owned();
    if let Some(unknown) = args
        .only
        .iter()
        .find(|o| !scenarios.iter().any(|s| id(s) == **o))
    {
        eprintln!("--only: unknown scenario `{unknown}`\n{USAGE}");
        std::process::exit(2);
    }
    let selected = |s: &Scenario| args.only.is_empty() || args.only.contains(&id(s));
    println!("switchboard webhook benchmark");
    println!(
        "parameters: M = {} messages per scenario (sections 1, 2), C = {} concurrent HTTP publishers, L = {} messages (section 3)",
        args.messages, args.concurrency, args.limit_messages
    );
    println!(
        "machine: {cores} cores visible; broker: server.workers = 0 ({cores} HTTP workers, {cores} room arbiters), outbox in a temp file (WAL), fresh broker and receiver per scenario; receiver: 1 actix-web worker answering 204; publishers: 1 thread, awc, {WARMUP_PER_CLIENT} warm-up publishes per client to another room first"
    );
    println!(
        "room members: {}",
        if args.ws_member {
            "one WebSocket session joined to the room, reading every message (--ws-member)"
        } else {
            "none (the publishes come over HTTP only)"
        }
    );
    println!(
        "publish: POST /api/rooms/{ROOM}/publish with a JSON body of about 60 bytes; latency = request sent → answer read; e2e = webhook arrival at the receiver − publish answer read (same clock)"
    );
    for s in scenarios.iter().filter(|s| selected(s)) {
        println!("# running {} ...", s.name);
        let t0 = Instant::now();
        let row = run(s, args.concurrency, default_rate, args.ws_member).await;
        println!("#   done in {:.2} s", t0.elapsed().as_secs_f64());
        rows.push(row);
    }
    print_table(&rows);
    println!();
    println!(
        "total {:.1} s (including broker starts and stops)",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{err}\n{USAGE}");
            std::process::exit(2);
        }
    };
    actix_rt::System::new().block_on(bench(args));
}
