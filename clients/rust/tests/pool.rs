//! The HTTP API client and the per-host pool, against real in-process brokers: publishes
//! seen by WebSocket subscribers, retries deduplicated, history paging, presence, typed
//! errors; requests spread over the pool's connections, idle connections closed.

use crate::support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;
use serde_json::json;
use support::{http, options, test_config, token, API_KEY, SECRET, WAIT};
use switchboard::config::{Config, NamespaceConfig};
use switchboard::{server, HandlerError, HandlerRequest, Reply};
use switchboard_client::{
    Client, Error, HttpClient, HttpOptions, Message, Pool, PoolOptions, Subscription,
    SubscriptionEvent,
};
use tokio::sync::oneshot;

/// The application type the brokers of these tests answer: after `payload.sleep_ms`, an
/// `echo.reply` with the payload and the id of the calling connection.
const SLOW_ECHO: &str = "pool.echo";

struct SlowEcho;

impl Actor for SlowEcho {
    type Context = Context<Self>;
}

impl Handler<HandlerRequest> for SlowEcho {
    type Result = ResponseFuture<Result<Reply, HandlerError>>;

    fn handle(&mut self, req: HandlerRequest, _: &mut Self::Context) -> Self::Result {
        Box::pin(async move {
            let sleep = req.payload["sleep_ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(sleep)).await;
            Ok(Reply::new(
                "echo.reply",
                json!({"echo": req.payload, "connection": &*req.connection_id}),
            ))
        })
    }
}

/// A broker on its own thread and actix system, answering [`SLOW_ECHO`].
struct Broker {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Broker {
    fn start(config: Config) -> Broker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let broker = switchboard::Broker::start(config).expect("valid test config");
                broker
                    .register_handler(SLOW_ECHO, SlowEcho.start().recipient())
                    .await
                    .expect("register the handler");
                let _ = ready_tx.send(());
                server::serve(broker, listener, async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("serve");
            });
        });
        ready_rx.recv_timeout(WAIT).expect("broker started");
        Broker {
            addr,
            stop: Some(stop_tx),
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The live sessions `/healthz` counts.
    async fn sessions(&self) -> u64 {
        let (status, health) = http(self.addr, "GET", "/healthz").await;
        assert_eq!(status, 200, "{health}");
        health["sessions"].as_u64().expect("sessions count")
    }

    /// Waits (bounded) until the broker counts `n` live sessions.
    async fn wait_sessions(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let sessions = self.sessions().await;
            if sessions == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sessions} sessions after {WAIT:?}, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The members of `room` that `GET /api/rooms` reports (0 when it is not running).
    async fn members(&self, room: &str) -> u64 {
        let (status, body) = http(self.addr, "GET", "/api/rooms").await;
        assert_eq!(status, 200, "{body}");
        body["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .find(|r| r["room"] == room)
            .and_then(|r| r["members"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn config_with(namespaces: &[(&str, NamespaceConfig)]) -> Config {
    let mut config = test_config();
    for (name, ns) in namespaces {
        config.namespaces.insert((*name).to_owned(), ns.clone());
    }
    config
}

async fn next_message(stream: &mut Subscription) -> Message {
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("event in time")
        .expect("subscription open");
    match event {
        SubscriptionEvent::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next message of `stream`, which must be `seq` with message id `id`.
async fn next_is(stream: &mut Subscription, seq: u64, id: &str) -> Message {
    let m = next_message(stream).await;
    assert_eq!((m.seq, m.id.as_str()), (seq, id), "{m:?}");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publishes_reach_subscribers_once_with_the_acked_seq() {
    let broker = Broker::start(test_config());
    let api = HttpClient::new(&broker.http_url(), API_KEY).expect("http client");
    let reader = Client::connect(
        &broker.ws_url(),
        options(token("reader", &["news:*", "broadcast"])),
    )
    .await
    .expect("reader connects");
    // Replaying from 0 makes the order of the join and the first publish irrelevant.
    let mut news = reader.subscribe_from("news:1", 0).expect("subscribe");

    let ack = api
        .publish_with_id("news:1", "ord-1", json!({"text": "deployed"}))
        .await
        .expect("publish");
    assert_eq!(ack.room, "news:1");
    assert_eq!(ack.id, "ord-1");
    assert!(!ack.duplicate);
    let m = next_is(&mut news, ack.seq, "ord-1").await;
    assert_eq!(m.seq, 1);
    assert_eq!(m.msg_type, "room.message");
    assert_eq!(m.payload, json!({"text": "deployed"}));
    assert!(m.timestamp.is_some());

    // A retry with the same id is acknowledged with the original seq and not delivered.
    let retry = api
        .publish_with_id("news:1", "ord-1", json!({"text": "deployed"}))
        .await
        .expect("retry");
    assert_eq!((retry.seq, retry.duplicate), (ack.seq, true));

    // A publish without an id of its own gets a fresh one; it is the next message the
    // subscriber sees, so the retry was not delivered.
    let fresh = api
        .publish("news:1", json!({"n": 2}))
        .await
        .expect("publish");
    assert!(!fresh.duplicate);
    assert_eq!(fresh.seq, 2);
    assert!(!fresh.id.is_empty() && fresh.id != "ord-1");
    next_is(&mut news, 2, &fresh.id).await;

    let typed = api
        .publish_typed("news:1", "task.update", json!({"progress": 0.5}))
        .await
        .expect("typed publish");
    let m = next_is(&mut news, 3, &typed.id).await;
    assert_eq!(m.msg_type, "task.update");
    let refused = api
        .publish_typed("news:1", "system.ping", json!(1))
        .await
        .expect_err("broker types are refused");
    assert!(
        matches!(&refused, Error::Http { status: 400, code, .. } if code == "bad_request"),
        "{refused:?}"
    );

    // The personal room and `broadcast`.
    let mut personal = reader.subscribe_from("user:reader", 0).expect("own room");
    let sent = api
        .send_to_user("reader", json!({"text": "you have mail"}))
        .await
        .expect("send to user");
    assert_eq!(sent.room, "user:reader");
    let m = next_is(&mut personal, sent.seq, &sent.id).await;
    assert_eq!(m.payload["text"], "you have mail");
    let mut everyone = reader.subscribe_from("broadcast", 0).expect("broadcast");
    let all = api
        .broadcast(json!({"text": "maintenance"}))
        .await
        .expect("broadcast");
    assert_eq!(all.room, "broadcast");
    next_is(&mut everyone, all.seq, &all.id).await;

    reader.close().await;
    broker.wait_sessions(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_forward_and_reports_what_was_lost() {
    let short = NamespaceConfig {
        history_size: Some(3),
        ..NamespaceConfig::default()
    };
    let broker = Broker::start(config_with(&[("short", short)]));
    let api = HttpClient::new(&broker.http_url(), API_KEY).expect("http client");
    let mut ids = Vec::new();
    for n in 1..=5 {
        let ack = api
            .publish("log:1", json!({ "n": n }))
            .await
            .expect("publish");
        assert_eq!(ack.seq, n);
        ids.push(ack.id);
    }

    // Pages of two, each starting after the last seq of the one before.
    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let page = api.history("log:1", since, 2).await.expect("history");
        assert_eq!((page.room.as_str(), page.seq), ("log:1", 5));
        assert!(page.recovered, "{page:?}");
        assert!(page.messages.len() <= 2);
        let Some(last) = page.messages.last() else {
            break;
        };
        since = last.seq;
        for m in page.messages {
            assert_eq!(m.room, "log:1");
            assert_eq!(m.msg_type, "room.message");
            assert_eq!(m.payload["n"], m.seq);
            assert!(m.timestamp.is_some());
            seen.push((m.seq, m.id));
        }
    }
    let expected: Vec<(u64, String)> = (1..=5).zip(ids).collect();
    assert_eq!(seen, expected);

    // A `since` above the room's seq (the room was reset): nothing, not recovered.
    let ahead = api.history("log:1", 9, 10).await.expect("history");
    assert!(ahead.messages.is_empty());
    assert!(!ahead.recovered);

    // A namespace keeping three messages: the first two are gone, and that is reported.
    for n in 1..=5 {
        api.publish("short:1", json!({ "n": n }))
            .await
            .expect("publish");
    }
    let page = api.history("short:1", 0, 100).await.expect("history");
    assert!(!page.recovered);
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    let page = api.history("short:1", 2, 100).await.expect("history");
    assert!(page.recovered, "everything after seq 2 is kept");
    assert_eq!(page.messages.len(), 3);

    // A room that never ran.
    let empty = api.history("nobody:1", 0, 10).await.expect("history");
    assert_eq!((empty.seq, empty.recovered), (0, true));
    assert!(empty.messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_users_and_is_a_conflict_where_it_is_off() {
    let with_presence = NamespaceConfig {
        presence: true,
        ..NamespaceConfig::default()
    };
    let broker = Broker::start(config_with(&[("conv", with_presence)]));
    let api = HttpClient::new(&broker.http_url(), API_KEY).expect("http client");
    assert_eq!(api.presence("conv:1").await.expect("presence"), []);

    let mut clients = Vec::new();
    let mut rooms = Vec::new();
    for user in ["bob", "alice", "alice"] {
        let client = Client::connect(&broker.ws_url(), options(token(user, &["conv:*"])))
            .await
            .expect("connects");
        rooms.push(client.subscribe("conv:1").expect("subscribe"));
        clients.push(client);
    }
    let deadline = Instant::now() + WAIT;
    let members = loop {
        let members = api.presence("conv:1").await.expect("presence");
        let counts: Vec<(&str, u32)> = members
            .iter()
            .map(|m| (m.user.as_str(), m.connections))
            .collect();
        if counts == [("alice", 2), ("bob", 1)] {
            break members;
        }
        assert!(
            Instant::now() < deadline,
            "presence after {WAIT:?}: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(members.iter().all(|m| m.joined_at.is_some()), "{members:?}");

    let err = api.presence("lobby:1").await.expect_err("presence is off");
    match &err {
        Error::Http {
            status,
            code,
            message,
            retry_after,
        } => {
            assert_eq!((*status, code.as_str()), (409, "conflict"));
            assert!(message.contains("presence"), "{message}");
            assert_eq!(*retry_after, None);
        }
        other => panic!("expected a 409, got {other:?}"),
    }

    drop(rooms);
    for client in clients {
        client.close().await;
    }
    broker.wait_sessions(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_rate_limits_are_typed_errors() {
    let mut config = test_config();
    config.api.requests_per_second = 1;
    let broker = Broker::start(config);

    let bad_key = HttpClient::new(&broker.http_url(), "not-the-key-0123456789").expect("client");
    let err = bad_key
        .publish("news:1", json!(1))
        .await
        .expect_err("unknown key");
    assert!(
        matches!(&err, Error::Http { status: 401, code, .. } if code == "unauthorized"),
        "{err:?}"
    );
    let user_token = HttpClient::new(&broker.http_url(), token("alice", &["*"])).expect("client");
    let err = user_token
        .history("news:1", 0, 10)
        .await
        .expect_err("not an admin token");
    assert!(
        matches!(&err, Error::Http { status: 403, code, .. } if code == "forbidden"),
        "{err:?}"
    );
    let admin = switchboard::auth::mint_hs256_admin(
        SECRET,
        "ops",
        vec!["*".into()],
        None,
        Duration::from_secs(600),
    )
    .expect("admin token");
    let admin = HttpClient::new(&broker.http_url(), admin).expect("client");
    admin
        .publish("news:1", json!("by an admin"))
        .await
        .expect("an admin token is a credential");

    // One request a second: without retries, the caller sees the 429 and its Retry-After.
    let no_retries = HttpClient::with_options(
        &broker.http_url(),
        API_KEY,
        HttpOptions {
            retries: 0,
            ..HttpOptions::default()
        },
    )
    .expect("client");
    let mut limited = None;
    for _ in 0..20 {
        if let Err(err) = no_retries.history("news:1", 0, 1).await {
            limited = Some(err);
            break;
        }
    }
    match limited.expect("a 429 within 20 requests") {
        Error::Http {
            status: 429,
            code,
            retry_after,
            ..
        } => {
            assert_eq!(code, "rate_limited");
            assert_eq!(retry_after, Some(Duration::from_secs(1)));
        }
        other => panic!("expected a 429, got {other:?}"),
    }
    // With retries, the client waits out the Retry-After and the publish goes through
    // (with its id, so it is delivered once even if an attempt had reached the broker).
    let patient = HttpClient::with_options(
        &broker.http_url(),
        API_KEY,
        HttpOptions {
            retries: 4,
            ..HttpOptions::default()
        },
    )
    .expect("client");
    let ack = patient
        .publish("news:1", json!("eventually"))
        .await
        .expect("published after waiting");
    assert!(!ack.duplicate);

    let err = HttpClient::new(&broker.ws_url(), API_KEY).expect_err("not an http URL");
    assert!(matches!(err, Error::InvalidUrl(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_spreads_concurrent_requests_over_at_most_size_connections() {
    let broker = Broker::start(test_config());
    let url = broker.ws_url();
    let pool = Pool::new(PoolOptions {
        size: 4,
        client: options(token("worker", &[])),
        ..PoolOptions::default()
    });
    assert_eq!(pool.connections(&url), 0);

    let calls: Vec<_> = (0..50)
        .map(|n| {
            let pool = pool.clone();
            let url = url.clone();
            tokio::spawn(async move {
                pool.request(
                    &url,
                    SLOW_ECHO,
                    json!({"n": n, "sleep_ms": 100}),
                    Duration::from_secs(10),
                )
                .await
            })
        })
        .collect();
    let mut per_connection: HashMap<String, usize> = HashMap::new();
    for (n, call) in calls.into_iter().enumerate() {
        let reply = call.await.expect("task").expect("reply");
        assert_eq!(reply.msg_type, "echo.reply");
        let payload = reply.payload.expect("payload");
        assert_eq!(payload["echo"]["n"], n);
        let connection = payload["connection"].as_str().expect("connection id");
        *per_connection.entry(connection.to_owned()).or_default() += 1;
    }
    // 50 calls in flight at once: the pool opened its 4 connections and no more, and the
    // calls went to the least busy one each time.
    assert_eq!(per_connection.len(), 4, "{per_connection:?}");
    assert!(
        per_connection.values().all(|&calls| calls >= 5),
        "{per_connection:?}"
    );
    assert_eq!(pool.connections(&url), 4);
    broker.wait_sessions(4).await;

    // Calls one at a time reuse an open connection.
    for n in 0..5 {
        pool.request(&url, SLOW_ECHO, json!({ "n": n }), Duration::from_secs(5))
            .await
            .expect("reply");
    }
    assert_eq!(pool.connections(&url), 4);

    // Application requests need a WebSocket; the HTTP-only calls need an http URL.
    let err = pool
        .request(
            &broker.http_url(),
            SLOW_ECHO,
            json!({}),
            Duration::from_secs(5),
        )
        .await
        .expect_err("http URL");
    match &err {
        Error::InvalidUrl(message) => assert!(
            message.contains("application requests need a ws:// or wss:// URL"),
            "{message}"
        ),
        other => panic!("expected InvalidUrl, got {other:?}"),
    }
    let err = pool
        .history(&url, "news:1", 0, 10)
        .await
        .expect_err("ws URL");
    assert!(matches!(err, Error::InvalidUrl(_)), "{err:?}");
    let err = pool
        .request("tcp://x", SLOW_ECHO, json!({}), Duration::from_secs(1))
        .await
        .expect_err("unknown scheme");
    assert!(matches!(err, Error::InvalidUrl(_)), "{err:?}");

    pool.close().await;
    assert_eq!(pool.connections(&url), 0);
    broker.wait_sessions(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_kept() {
    let broker = Broker::start(test_config());
    let url = broker.ws_url();
    let idle_timeout = Duration::from_millis(300);
    let pool = Pool::new(PoolOptions {
        size: 2,
        idle_timeout,
        client: options(token("worker", &[])),
        ..PoolOptions::default()
    });

    // A call longer than the idle timeout keeps its connection, alongside a short one.
    let slow = {
        let pool = pool.clone();
        let url = url.clone();
        tokio::spawn(async move {
            pool.request(
                &url,
                SLOW_ECHO,
                json!({"sleep_ms": 1000}),
                Duration::from_secs(10),
            )
            .await
        })
    };
    let deadline = Instant::now() + WAIT;
    while pool.connections(&url) == 0 {
        assert!(Instant::now() < deadline, "no connection after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pool.request(&url, SLOW_ECHO, json!({"n": 1}), Duration::from_secs(5))
        .await
        .expect("short call");
    assert_eq!(
        pool.connections(&url),
        2,
        "the busy connection was not shared"
    );
    // Taken before the slow call ends: its connection is idle from a later instant on.
    let started = Instant::now();
    let reply = slow.await.expect("task").expect("the slow call survived");
    assert_eq!(reply.payload.expect("payload")["echo"]["sleep_ms"], 1000);

    // Unused for the idle timeout: both closed, and the broker sees the sessions go.
    let deadline = Instant::now() + WAIT;
    while pool.connections(&url) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections after {WAIT:?}",
            pool.connections(&url)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() >= idle_timeout,
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );
    broker.wait_sessions(0).await;

    // The next call opens a new connection.
    pool.request(&url, SLOW_ECHO, json!({"n": 2}), Duration::from_secs(5))
        .await
        .expect("reply on a new connection");
    assert_eq!(pool.connections(&url), 1);
    broker.wait_sessions(1).await;
    drop(pool);
    broker.wait_sessions(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_publishes_over_http_and_websocket() {
    let broker = Broker::start(test_config());
    let (ws, web) = (broker.ws_url(), broker.http_url());
    let reader = Client::connect(&ws, options(token("reader", &["news:*"])))
        .await
        .expect("reader connects");
    let mut news = reader.subscribe_from("news:2", 0).expect("subscribe");
    let pool = Pool::new(PoolOptions {
        size: 2,
        client: options(token("writer", &["news:*"])),
        credential: Some(API_KEY.into()),
        ..PoolOptions::default()
    });

    let over_http = pool
        .publish(&web, "news:2", json!({"via": "http"}))
        .await
        .expect("http publish");
    assert_eq!(over_http.seq, 1);
    assert_eq!(pool.connections(&web), 0, "http has no pooled sockets");
    let over_ws = pool
        .publish(&ws, "news:2", json!({"via": "ws"}))
        .await
        .expect("ws publish");
    assert_eq!(over_ws.seq, 2);
    let first = pool
        .publish_with_id(&ws, "news:2", "ws-1", json!({"via": "ws", "id": "ws-1"}))
        .await
        .expect("ws publish with id");
    let again = pool
        .publish_with_id(&ws, "news:2", "ws-1", json!({"via": "ws", "id": "ws-1"}))
        .await
        .expect("ws retry");
    assert_eq!((first.seq, first.duplicate), (3, false));
    assert_eq!((again.seq, again.duplicate), (3, true));

    // Concurrent publishes over the pool's sockets: each acked once, seqs distinct.
    let publishes: Vec<_> = (0..20)
        .map(|n| {
            let pool = pool.clone();
            let ws = ws.clone();
            tokio::spawn(async move { pool.publish(&ws, "news:2", json!({ "n": n })).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for publish in publishes {
        seqs.push(publish.await.expect("task").expect("ack").seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (4..=23).collect::<Vec<u64>>());

    next_is(&mut news, 1, &over_http.id).await;
    next_is(&mut news, 2, &over_ws.id).await;
    next_is(&mut news, 3, "ws-1").await;
    for seq in 4..=23 {
        assert_eq!(next_message(&mut news).await.seq, seq);
    }
    let last = pool
        .publish(&web, "news:2", json!("last"))
        .await
        .expect("publish");
    next_is(&mut news, 24, &last.id).await;
    let page = pool.history(&web, "news:2", 20, 10).await.expect("history");
    assert_eq!(page.seq, 24);
    assert_eq!(page.messages.len(), 4);
    let err = pool.presence(&ws, "news:2").await.expect_err("ws URL");
    assert!(matches!(err, Error::InvalidUrl(_)), "{err:?}");

    // The pooled sockets joined only for their publishes: the reader is the one member.
    let deadline = Instant::now() + WAIT;
    loop {
        let members = broker.members("news:2").await;
        if members == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{members} members after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pool.connections(&ws) >= 1);

    pool.close().await;
    reader.close().await;
    broker.wait_sessions(0).await;
}
