//! Shared set-up for the integration tests: a real broker on `127.0.0.1:0` in its own actix
//! system (thread), and a WebSocket test client that waits on events with timeouts.

pub mod cluster;
pub mod jwks;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod receiver;
pub mod redis;
pub mod reference;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use switchboard::config::Config;
use switchboard::ShutdownReport;
use switchboard::{server, Broker};
use tokio::sync::oneshot;

/// The HS256 secret of test brokers.
pub const SECRET: &str = "integration-test-secret-0123456789";

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A config for tests: loopback, HS256 with [`SECRET`], no anonymous access.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".into();
    config.server.workers = 2;
    config.auth.hs256_secret = SECRET.into();
    // In memory: test brokers must not share (or leave behind) an outbox file.
    config.webhooks.outbox_path = String::new();
    // The same for the task store (tests of its files set their own path).
    config.tasks.sqlite_path = String::new();
    // Shutdown tests need not wait for load balancers.
    config.server.drain_delay = Duration::ZERO;
    config
}

/// A token for `sub` allowed to join and publish to `rooms`.
pub fn token(sub: &str, rooms: &[&str]) -> String {
    switchboard::auth::mint_hs256(
        SECRET,
        sub,
        rooms.iter().map(|r| r.to_string()).collect(),
        None,
        Duration::from_secs(600),
    )
    .expect("sign token")
}

/// The project's own client (`switchboard_client`) on `url` as `sub`, allowed on `rooms`:
/// connected, reconnecting within milliseconds of a drop (tests cut connections on purpose).
pub async fn connect_client(url: &str, sub: &str, rooms: &[&str]) -> switchboard_client::Client {
    let options = switchboard_client::Options {
        connect_timeout: WAIT,
        reconnect: Some(switchboard_client::Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(100),
            max_attempts: Some(100),
            jitter: 0.5,
        }),
        ..switchboard_client::Options::with_token(token(sub, rooms))
    };
    switchboard_client::Client::connect(url, options)
        .await
        .unwrap_or_else(|e| panic!("{sub} connects to {url}: {e}"))
}

/// The next message of `room` within [`WAIT`], skipping presence events; a gap (messages
/// the broker could not give back) or a refusal fails the test.
pub async fn next_message(
    room: &mut switchboard_client::Subscription,
) -> switchboard_client::Message {
    use switchboard_client::SubscriptionEvent;
    loop {
        let event = tokio::time::timeout(WAIT, room.next())
            .await
            .unwrap_or_else(|_| panic!("no message of {} within {WAIT:?}", room.room()))
            .unwrap_or_else(|| panic!("the subscription of {} ended", room.room()));
        match event {
            SubscriptionEvent::Message(message) => return message,
            SubscriptionEvent::Presence(_) => {}
            other => panic!("expected a message of {}, got {other:?}", room.room()),
        }
    }
}

/// Waits (at most [`WAIT`]) for the next `Connected` of a client's state stream: after a
/// drop, the client is back and has asked the broker to resume.
pub async fn next_connected(states: &mut switchboard_client::StateStream) {
    loop {
        let state = tokio::time::timeout(WAIT, states.next())
            .await
            .unwrap_or_else(|_| panic!("not connected again within {WAIT:?}"))
            .expect("the client is open");
        if state.is_connected() {
            return;
        }
    }
}

/// Waits (at most [`WAIT`]) until `count` (a progress counter, e.g. of acknowledged
/// publishes) reaches `target`.
pub async fn wait_count(count: &mut tokio::sync::watch::Receiver<u64>, target: u64) {
    let reached = matches!(
        tokio::time::timeout(WAIT, count.wait_for(|&n| n >= target)).await,
        Ok(Ok(_))
    );
    assert!(reached, "still at {} of {target}", *count.borrow());
}

type Setup = Box<dyn FnOnce(Broker) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A broker running in a background thread.
pub struct TestBroker {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    report: Option<oneshot::Receiver<ShutdownReport>>,
}

impl TestBroker {
    /// Starts a broker with `config`.
    pub fn start(config: Config) -> TestBroker {
        Self::start_with(config, |_| async {})
    }

    /// Starts a broker with `config`, running `setup` (e.g. handler registration) before
    /// it accepts connections.
    pub fn start_with<F, Fut>(config: Config, setup: F) -> TestBroker
    where
        F: FnOnce(Broker) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let setup: Setup = Box::new(move |b| Box::pin(setup(b)));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (report_tx, report_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let broker = Broker::start(config).expect("valid test config");
                setup(broker.clone()).await;
                let _ = ready_tx.send(());
                let report = server::serve(broker, listener, async {
                    let _ = shutdown_rx.await;
                })
                .await
                .expect("serve");
                let _ = report_tx.send(report);
            });
        });
        ready_rx.recv_timeout(WAIT).expect("broker started");
        TestBroker {
            addr,
            shutdown: Some(shutdown_tx),
            report: Some(report_rx),
        }
    }

    /// `ws://addr/ws?token=…` (no token when `None`).
    pub fn ws_url(&self, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://{}/ws?token={t}", self.addr),
            None => format!("ws://{}/ws", self.addr),
        }
    }

    /// `http://addr{path}`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connects with a token for `sub` on `rooms` and reads `system.connection.established`.
    pub async fn client(&self, sub: &str, rooms: &[&str]) -> Client {
        let mut client = Client::connect(&self.ws_url(Some(&token(sub, rooms)))).await;
        client.recv_type("system.connection.established").await;
        client
    }

    /// Starts graceful shutdown and waits for its report.
    pub async fn shutdown(mut self) -> ShutdownReport {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let report = self.report.take().expect("not yet shut down");
        tokio::time::timeout(Duration::from_secs(30), report)
            .await
            .expect("shutdown finished in time")
            .expect("broker thread reported")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A WebSocket test client.
pub struct Client {
    framed: Framed<BoxedSocket, Codec>,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub struct Closed {
    /// Close code (None when the peer sent no code or just dropped TCP).
    pub code: Option<u16>,
    /// Close reason.
    pub reason: String,
}

impl Client {
    /// Connects or panics.
    pub async fn connect(url: &str) -> Client {
        Client::try_connect(awc::Client::new().ws(url))
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    /// Connects with a prepared request (headers, cookies, protocols).
    pub async fn try_connect(req: awc::ws::WebsocketsRequest) -> Result<Client, String> {
        let (_, framed) = tokio::time::timeout(WAIT, req.max_frame_size(1 << 24).connect())
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(Client { framed })
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.framed
            .send(Message::Text(ByteString::from(text.to_owned())))
            .await
            .expect("send text");
    }

    /// Sends a raw frame.
    pub async fn send_message(&mut self, message: Message) {
        self.framed.send(message).await.expect("send frame");
    }

    /// The next frame, within [`WAIT`].
    pub async fn next_frame(&mut self) -> Option<Frame> {
        match tokio::time::timeout(WAIT, self.framed.next()).await {
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(Some(Err(e))) => panic!("protocol error from broker: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next JSON text message (pings answered transparently at the WebSocket level).
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_frame().await {
                Some(Frame::Text(bytes)) => {
                    return serde_json::from_slice(&bytes).expect("broker sends JSON")
                }
                Some(Frame::Ping(b)) => {
                    let _ = self.framed.send(Message::Pong(b)).await;
                }
                Some(Frame::Close(reason)) => {
                    panic!("closed while waiting for a message: {reason:?}")
                }
                Some(other) => panic!("unexpected frame {other:?}"),
                None => panic!("connection ended while waiting for a message"),
            }
        }
    }

    /// The next message of `msg_type`, skipping heartbeat pings.
    pub async fn recv_type(&mut self, msg_type: &str) -> Value {
        loop {
            let msg = self.recv().await;
            if msg["type"] == msg_type {
                return msg;
            }
            if msg["type"] != "system.ping" {
                panic!("expected {msg_type}, got {msg}");
            }
        }
    }

    /// The next message of `msg_type`, skipping every other message.
    pub async fn skip_until(&mut self, msg_type: &str) -> Value {
        loop {
            let msg = self.recv().await;
            if msg["type"] == msg_type {
                return msg;
            }
        }
    }

    /// The next JSON-RPC response (a frame with `result` or `error`), skipping pushes.
    pub async fn skip_until_result(&mut self) -> Value {
        loop {
            let msg = self.recv().await;
            if msg.get("result").is_some() || msg.get("error").is_some() {
                return msg;
            }
        }
    }

    /// Reads until the broker closes; returns the close code and reason. Answers the close.
    pub async fn expect_close(&mut self) -> Closed {
        loop {
            match self.next_frame().await {
                Some(Frame::Close(reason)) => {
                    let _ = self.framed.send(Message::Close(reason.clone())).await;
                    return Closed {
                        code: reason.as_ref().map(|r| u16::from(r.code)),
                        reason: reason.and_then(|r| r.description).unwrap_or_default(),
                    };
                }
                Some(_) => continue,
                None => {
                    return Closed {
                        code: None,
                        reason: String::new(),
                    }
                }
            }
        }
    }

    /// Joins `room` and returns the `room.joined` reply.
    pub async fn join(&mut self, room: &str) -> Value {
        self.send_json(
            serde_json::json!({"type": "room.join", "room": room, "id": format!("join-{room}")}),
        )
        .await;
        let joined = self.recv_type("room.joined").await;
        assert_eq!(joined["room"], room);
        joined
    }

    /// Publishes `payload` to `room` with message id `id`.
    pub async fn publish(&mut self, room: &str, id: &str, payload: Value) {
        self.send_json(
            serde_json::json!({"type": "room.publish", "room": room, "id": id, "payload": payload}),
        )
        .await;
    }

    /// Closes the connection normally.
    pub async fn close(mut self) {
        let _ = self.framed.send(Message::Close(None)).await;
    }
}

/// The `# >>> profile: <name>` block of `config.example.toml`, uncommented and parsed:
/// its endpoints and bridges, to put into a test config.
pub fn example_profile(name: &str) -> Config {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
        .expect("read config.example.toml");
    let start = format!("# >>> profile: {name}");
    let body: String = text
        .lines()
        .skip_while(|l| *l != start)
        .skip(1)
        .take_while(|l| *l != "# <<<")
        .skip_while(|l| !l.starts_with("# ["))
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or("")))
        .collect();
    assert!(
        !body.is_empty(),
        "no profile `{name}` in config.example.toml"
    );
    let toml = format!("[auth]\nhs256_secret = \"{SECRET}\"\n{body}");
    Config::from_toml_with_env(&toml, std::path::Path::new("config.example.toml"), &[])
        .unwrap_or_else(|e| panic!("profile `{name}`: {e}"))
}

/// A broker's `/metrics` as text.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let mut resp = awc::Client::new()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape /metrics");
    String::from_utf8(resp.body().limit(1 << 24).await.expect("body").to_vec())
        .expect("metrics are UTF-8")
}

/// The value of the metric line that starts with `series` (e.g.
/// `switchboard_bridge_active{bridge="responses"}`); 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `series` satisfies `done` (at most [`WAIT`]); its last value.
pub async fn wait_metric(addr: SocketAddr, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let value = metric_value(&metrics_text(addr).await, series);
        if done(value) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is still {value} after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Client {
    /// The next text frame as it came, byte for byte (pings answered).
    pub async fn recv_text(&mut self) -> String {
        loop {
            match self.next_frame().await {
                Some(Frame::Text(bytes)) => {
                    return String::from_utf8(bytes.to_vec()).expect("text frames are UTF-8")
                }
                Some(Frame::Ping(b)) => {
                    let _ = self.framed.send(Message::Pong(b)).await;
                }
                Some(other) => panic!("expected a text frame, got {other:?}"),
                None => panic!("connection ended while waiting for a text frame"),
            }
        }
    }

    /// Waits for a WebSocket ping from the broker, answering it; panics on a text frame.
    pub async fn expect_ping(&mut self) {
        match self.next_frame().await {
            Some(Frame::Ping(b)) => {
                let _ = self.framed.send(Message::Pong(b)).await;
            }
            other => panic!("expected a ping, got {other:?}"),
        }
    }
}
