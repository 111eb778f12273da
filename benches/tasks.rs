//! Task API benchmark: latency of the simple operations under many concurrent users, and
//! fan-out of one task's events to many watchers.
//!
//! ```sh
//! cargo bench --bench tasks -- [--users U] [--rounds R] [--watchers W] [--events E]
//!                              [--client-threads T]
//!                              [--postgres "host=127.0.0.1 user=postgres dbname=…"]
//! ```
//!
//! Everything runs in this process on 127.0.0.1: a broker in its own thread and actix
//! system (`Broker::start` + `server::serve` on `127.0.0.1:0`) with its task store in a
//! temporary SQLite file (WAL), or in the given PostgreSQL database; the users on T client
//! threads (default 2), the worker and the watchers on the main thread.
//!
//! 1. **Operations**: U users (each their own token and keep-alive connection, opened before
//!    the clock starts; then all start at once), each running R rounds of: submit a
//!    task (`POST /api/agent`), read it (`GET /api/agent/{id}`), wait for the worker's
//!    approval request (a long poll on `/events`, not timed), approve it (`POST …/approve`).
//!    One worker connection claims every task (`task.claim` with `wait`), asks for one
//!    approval and completes the task once approved. Then all users read their R tasks
//!    back at once (gets with no writes around them). Reported: p50 / p99 / max of submit,
//!    get, approve and the read-back gets, and operations per second over the whole phase.
//! 2. **Fan-out**: W watchers of one task on `/api/agent/{id}/updates` (the owner's tabs);
//!    the worker sends E `task.progress` messages, each carrying its send time; reported:
//!    deliveries, p50 / p99 / max of send → receipt, and deliveries per second.
//!
//! Every loop is bounded by counts and a deadline, and only loopback addresses are used.

use std::cell::RefCell;
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_codec::Framed;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

const SECRET: &str = "tasks-bench-secret-0123456789abcdef";

type Socket = Framed<BoxedSocket, Codec>;

struct Args {
    users: usize,
    rounds: usize,
    watchers: usize,
    events: usize,
    postgres: Option<String>,
    client_threads: usize,
}

fn args() -> Args {
    let mut args = Args {
        users: 200,
        rounds: 5,
        watchers: 500,
        events: 200,
        postgres: None,
        client_threads: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--users" => args.users = value().parse().unwrap_or(args.users),
            "--rounds" => args.rounds = value().parse().unwrap_or(args.rounds),
            "--watchers" => args.watchers = value().parse().unwrap_or(args.watchers),
            "--events" => args.events = value().parse().unwrap_or(args.events),
            "--postgres" => args.postgres = Some(value()),
            "--client-threads" => {
                args.client_threads = value().parse().unwrap_or(2).max(1);
            }
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    args
}

fn token(sub: &str) -> String {
    switchboard::auth::mint_hs256(SECRET, sub, Vec::new(), None, Duration::from_secs(3600))
        .expect("sign")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Starts a broker; returns its address.
fn start_broker(args: &Args, dir: &std::path::Path) -> std::net::SocketAddr {
    let mut config = switchboard::Config::default();
    config.server.bind = "127.0.0.1:0".into();
    config.auth.hs256_secret = SECRET.into();
    config.webhooks.outbox_path = String::new();
    config.limits.max_sessions_per_user = 10_000;
    config.limits.messages_per_second = 100_000;
    config.limits.burst = 100_000;
    config.tasks.requests_per_second = 0;
    config.tasks.max_active_per_user = 1000;
    config.tasks.worker_subjects = vec!["*-worker".into()];
    config.api.requests_per_second = 0;
    match &args.postgres {
        Some(url) => {
            config.tasks.store = switchboard::config::TaskStoreKind::Postgres;
            config.tasks.postgres_url = url.clone();
        }
        None => config.tasks.sqlite_path = dir.join("tasks.db").to_string_lossy().into(),
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let broker = switchboard::Broker::start(config).expect("broker");
            let _ = ready.send(());
            let _ = switchboard::server::serve(broker, listener, std::future::pending()).await;
        });
    });
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("broker started");
    addr
}

async fn connect(url: &str) -> Socket {
    awc::Client::new()
        .ws(url)
        .max_frame_size(1 << 20)
        .connect()
        .await
        .map(|(_, ws)| ws)
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

async fn next_json(ws: &mut Socket) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .ok()??
        {
            Ok(Frame::Text(bytes)) => return serde_json::from_slice(&bytes).ok(),
            Ok(Frame::Ping(p)) => {
                let _ = ws.send(Message::Pong(p)).await;
            }
            Ok(Frame::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn send(ws: &mut Socket, msg_type: &str, payload: Value) {
    let frame = json!({"type": msg_type, "payload": payload}).to_string();
    let _ = ws.send(Message::Text(frame.into())).await;
}

/// The worker: claims every task, asks one approval, completes once approved. Runs until
/// the deadline.
async fn worker(addr: std::net::SocketAddr, deadline: Instant) {
    let mut ws = connect(&format!("ws://{addr}/ws?token={}", token("bench-worker"))).await;
    send(&mut ws, "task.claim", json!({"wait": true})).await;
    while Instant::now() < deadline {
        let Some(msg) = next_json(&mut ws).await else {
            return;
        };
        let task = match msg["type"].as_str() {
            Some("task.claimed") if !msg["payload"]["task"].is_null() => {
                msg["payload"]["task"].clone()
            }
            Some("task.assigned") => msg["payload"]["task"].clone(),
            Some("task.approval_decision") => {
                let id = msg["payload"]["taskId"].clone();
                send(
                    &mut ws,
                    "task.complete",
                    json!({"taskId": id, "result": {}}),
                )
                .await;
                continue;
            }
            Some("system.ping") => {
                send(&mut ws, "system.pong", json!({})).await;
                continue;
            }
            _ => continue,
        };
        let id = task["id"].clone();
        send(
            &mut ws,
            "task.approval_request",
            json!({"taskId": id, "description": "bench"}),
        )
        .await;
        send(&mut ws, "task.claim", json!({"wait": true})).await;
    }
}

struct Timings {
    submit: Vec<u64>,
    get: Vec<u64>,
    approve: Vec<u64>,
    /// Gets once every user's tasks are done: reads with no writes around them.
    get_only: Vec<u64>,
    /// When the read-back began (the first user past the barrier) and ended (the last get).
    reads_span: Option<(Instant, Instant)>,
}

async fn call(
    client: &awc::Client,
    method: &str,
    url: &str,
    bearer: &str,
    body: Option<Value>,
) -> (u16, Value, u64) {
    let started = Instant::now();
    let req = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    }
    .bearer_auth(bearer);
    let mut resp = match body {
        Some(body) => req.send_json(&body).await.expect("request"),
        None => req.send().await.expect("request"),
    };
    let body = resp
        .json::<Value>()
        .limit(1 << 22)
        .await
        .unwrap_or(Value::Null);
    (
        resp.status().as_u16(),
        body,
        started.elapsed().as_micros() as u64,
    )
}

async fn user(
    base: String,
    name: String,
    rounds: usize,
    timings: Arc<Mutex<Timings>>,
    start: Arc<tokio::sync::Barrier>,
    reads: Arc<tokio::sync::Barrier>,
) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let bearer = token(&name);
    // A user's browser holds a keep-alive connection: open it before the clock starts, so
    // the figures are the operations' and not 200 simultaneous TCP handshakes'.
    let url = format!("{base}/api/agent/history");
    let (status, _, _) = call(&client, "GET", &url, &bearer, None).await;
    assert_eq!(status, 200);
    start.wait().await;
    let mut ids = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (status, body, us) = call(
            &client,
            "POST",
            &format!("{base}/api/agent"),
            &bearer,
            Some(json!({"task": "bench"})),
        )
        .await;
        assert_eq!(status, 201, "submit: {body}");
        timings.lock().unwrap().submit.push(us);
        let id = body["data"]["task"]["id"].as_str().unwrap().to_owned();
        ids.push(id.clone());
        let (status, _, us) = call(
            &client,
            "GET",
            &format!("{base}/api/agent/{id}"),
            &bearer,
            None,
        )
        .await;
        assert_eq!(status, 200);
        timings.lock().unwrap().get.push(us);
        // Wait (long poll) for the approval request; not timed.
        let mut since = 0;
        let approval = loop {
            let (_, events, _) = call(
                &client,
                "GET",
                &format!("{base}/api/agent/{id}/events?since={since}&wait=10000"),
                &bearer,
                None,
            )
            .await;
            let list = events["data"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            since = events["data"]["lastSeq"].as_u64().unwrap_or(since);
            if let Some(e) = list.iter().find(|e| e["type"] == "approval_request") {
                break e["data"]["approvalRequest"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
        };
        let (status, body, us) = call(
            &client,
            "POST",
            &format!("{base}/api/agent/{id}/approve"),
            &bearer,
            Some(json!({"approvalId": approval, "approved": true})),
        )
        .await;
        assert_eq!(status, 200, "approve: {body}");
        timings.lock().unwrap().approve.push(us);
    }
    // Then every user reads their tasks back, all at once.
    reads.wait().await;
    let began = Instant::now();
    for id in ids {
        let url = format!("{base}/api/agent/{id}");
        let (status, _, us) = call(&client, "GET", &url, &bearer, None).await;
        assert_eq!(status, 200);
        timings.lock().unwrap().get_only.push(us);
    }
    let mut t = timings.lock().unwrap();
    let (first, last) = t.reads_span.unwrap_or((began, began));
    t.reads_span = Some((first.min(began), last.max(Instant::now())));
}

fn summary(name: &str, mut v: Vec<u64>) -> String {
    v.sort_unstable();
    let at = |q: f64| {
        v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0)
    };
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} |",
        v.len(),
        at(0.5) as f64 / 1000.0,
        at(0.99) as f64 / 1000.0,
        v.last().copied().unwrap_or(0) as f64 / 1000.0
    )
}

async fn run(args: Args) {
    let dir = tempfile_dir();
    let addr = start_broker(&args, &dir);
    let base = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(600);
    actix_rt::spawn(worker(addr, deadline));

    // 1. Operations.
    let timings = Arc::new(Mutex::new(Timings {
        submit: Vec::new(),
        get: Vec::new(),
        approve: Vec::new(),
        get_only: Vec::new(),
        reads_span: None,
    }));
    let start = Arc::new(tokio::sync::Barrier::new(args.users + 1));
    let reads = Arc::new(tokio::sync::Barrier::new(args.users));
    // The users are spread over client threads, as over browsers: one thread parsing every
    // answer would add its own queue to the figures.
    let threads: Vec<_> = (0..args.client_threads)
        .map(|t| {
            let (base, timings) = (base.clone(), timings.clone());
            let (start, reads) = (start.clone(), reads.clone());
            let (users, rounds, threads) = (args.users, args.rounds, args.client_threads);
            std::thread::spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let mine: Vec<_> = (t..users)
                        .step_by(threads)
                        .map(|i| {
                            actix_rt::spawn(user(
                                base.clone(),
                                format!("user-{i}"),
                                rounds,
                                timings.clone(),
                                start.clone(),
                                reads.clone(),
                            ))
                        })
                        .collect();
                    for u in mine {
                        u.await.expect("user");
                    }
                })
            })
        })
        .collect();
    start.wait().await;
    let started = Instant::now();
    for thread in threads {
        // Joined off this thread: the worker runs here and the users wait on it.
        tokio::task::spawn_blocking(move || thread.join().expect("client thread"))
            .await
            .expect("join");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let t = std::mem::replace(
        &mut *timings.lock().unwrap(),
        Timings {
            submit: vec![],
            get: vec![],
            approve: vec![],
            get_only: vec![],
            reads_span: None,
        },
    );
    let ops = (t.submit.len() + t.get.len() + t.approve.len() + t.get_only.len()) as f64;
    println!(
        "\n{} users x {} rounds on {} client threads, store: {}",
        args.users,
        args.rounds,
        args.client_threads,
        if args.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    );
    println!("| operation | count | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    println!("{}", summary("submit", t.submit));
    println!("{}", summary("get", t.get));
    println!("{}", summary("approve", t.approve));
    let reads = t.get_only.len() as f64;
    println!(
        "{}",
        summary("get, all users at once, no writes", t.get_only)
    );
    println!(
        "timed operations per second: {:.0} ({elapsed:.1} s, with the untimed long polls)",
        ops / elapsed
    );
    if let Some((first, last)) = t.reads_span {
        println!(
            "read-back: {:.0} gets per second with {} users waiting on one each",
            reads / (last - first).as_secs_f64(),
            args.users
        );
    }

    // 2. Fan-out to the watchers of one task, on a broker of its own (no other worker to
    // take the task).
    let addr = start_broker(&args, &tempfile_dir());
    let base = format!("http://{addr}");
    let owner = token("watched");
    let client = awc::Client::new();
    let (_, body, _) = call(
        &client,
        "POST",
        &format!("{base}/api/agent"),
        &owner,
        Some(json!({"task": "watched"})),
    )
    .await;
    let task_id = body["data"]["task"]["id"].as_str().unwrap().to_owned();
    let mut w = connect(&format!("ws://{addr}/ws?token={}", token("fanout-worker"))).await;
    send(&mut w, "task.claim", json!({})).await;
    let claimed = loop {
        let msg = next_json(&mut w).await.expect("claim answered");
        if msg["type"] == "task.claimed" {
            break msg;
        }
    };
    assert_eq!(claimed["payload"]["task"]["id"], task_id.as_str());
    send(
        &mut w,
        "task.step",
        json!({"taskId": task_id, "action": "start", "name": "stream"}),
    )
    .await;
    let latencies = Rc::new(RefCell::new(Vec::with_capacity(
        args.watchers * args.events,
    )));
    let mut watchers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.watchers);
    for _ in 0..args.watchers {
        let mut ws = connect(&format!(
            "ws://{addr}/api/agent/{task_id}/updates?token={owner}"
        ))
        .await;
        let (latencies, ready_tx, expected) = (latencies.clone(), ready_tx.clone(), args.events);
        watchers.push(actix_rt::spawn(async move {
            let mut seen = 0;
            let mut told = false;
            while seen < expected {
                let Some(frame) = next_json(&mut ws).await else {
                    return;
                };
                let event = &frame["payload"];
                if !told && event["type"] == "step_start" {
                    told = true;
                    let _ = ready_tx.send(()).await;
                }
                if event["type"] == "step_progress" {
                    if let Some(sent) = event["data"]["message"]
                        .as_str()
                        .and_then(|m| m.parse::<u64>().ok())
                    {
                        latencies.borrow_mut().push(now_us().saturating_sub(sent));
                        seen += 1;
                    }
                }
            }
        }));
    }
    for _ in 0..args.watchers {
        ready_rx.recv().await;
    }
    let started = Instant::now();
    for i in 0..args.events {
        let progress = (i * 100 / args.events.max(1)) as u64;
        send(
            &mut w,
            "task.progress",
            json!({"taskId": task_id, "progress": progress, "message": now_us().to_string()}),
        )
        .await;
        // One event per millisecond at most: a steady stream, not a burst.
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
    for watcher in watchers {
        let _ = watcher.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *latencies.borrow_mut());
    let deliveries = lat.len();
    println!(
        "\nfan-out: {} watchers of one task, {} progress events",
        args.watchers, args.events
    );
    println!("| measure | count | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    println!("{}", summary("send → watcher", lat));
    println!(
        "deliveries: {deliveries} of {} ({:.0}/s)",
        args.watchers * args.events,
        deliveries as f64 / elapsed
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-tasks-bench-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn main() {
    let args = args();
    actix_rt::System::new().block_on(run(args));
}
