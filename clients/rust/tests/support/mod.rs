//! Test support: brokers in-process (the way the broker's own tests start them), a
//! bounded wait for a broker to be idle, and the chaos proxy.

pub mod chaos;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{json, Value};
use switchboard::config::Config;
use switchboard::protocol::codes::ErrorCode;
use switchboard::{server, HandlerError, HandlerRequest, Reply, ShutdownReport};
use switchboard_client::{Backoff, Options, State, StateStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// The HS256 secret of test brokers.
pub const SECRET: &str = "client-test-secret-0123456789abcdef";
/// The API key of test brokers.
pub const API_KEY: &str = "client-test-api-key-0123456789";
/// Bound on any single wait.
pub const WAIT: Duration = Duration::from_secs(20);

/// A config for client tests: loopback, HS256, one worker, limits raised for bulk traffic,
/// short TTLs so rooms and sessions are gone soon after a test.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".into();
    config.server.workers = 1;
    config.server.drain_delay = Duration::ZERO;
    config.auth.hs256_secret = SECRET.into();
    config.api.keys = vec![API_KEY.into()];
    config.webhooks.outbox_path = String::new();
    config.tasks.sqlite_path = String::new();
    config.limits.messages_per_second = 1_000_000;
    config.limits.burst = 1_000_000;
    config.history.size = 20_000;
    config.history.max_bytes = 64 << 20;
    // History and resume state must outlive a chaos run (a few seconds, more on a busy
    // machine): expired history is a real gap, which the run would report. Short enough that
    // the rooms are gone within the tests' final wait for an idle broker.
    config.history.ttl = Duration::from_secs(10);
    config.resume.ttl = Duration::from_secs(10);
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

/// Client options for tests: `token`, fast bounded backoff.
pub fn options(token: String) -> Options {
    Options {
        connect_timeout: Duration::from_secs(5),
        reconnect: Some(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(200),
            max_attempts: Some(200),
            jitter: 0.5,
        }),
        ..Options::with_token(token)
    }
}

/// The application type test brokers answer: `echo.request` → `echo.response` with
/// `{"echo": <payload>, "user": <sub>}`; a payload `{"fail": true}` is refused.
pub const ECHO: &str = "echo.request";

struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}

impl Handler<HandlerRequest> for Echo {
    type Result = Result<Reply, HandlerError>;

    fn handle(&mut self, req: HandlerRequest, _: &mut Self::Context) -> Self::Result {
        if req.payload["fail"] == true {
            return Err(HandlerError::new(ErrorCode::BadRequest, "asked to fail"));
        }
        Ok(Reply::new(
            "echo.response",
            json!({"echo": req.payload, "user": &*req.user}),
        ))
    }
}

/// A broker on its own thread and actix system, answering [`ECHO`] requests.
pub struct TestBroker {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    report: Option<oneshot::Receiver<ShutdownReport>>,
}

impl TestBroker {
    /// On a free loopback port.
    pub fn start(config: Config) -> TestBroker {
        Self::serve(TcpListener::bind("127.0.0.1:0").expect("bind"), config)
    }

    /// On `addr` again (a restart), retrying the bind for a bounded time.
    pub fn start_on(addr: SocketAddr, config: Config) -> TestBroker {
        let deadline = Instant::now() + WAIT;
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot bind {addr} again: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        Self::serve(listener, config)
    }

    fn serve(listener: TcpListener, config: Config) -> TestBroker {
        let addr = listener.local_addr().expect("addr");
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (report_tx, report_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let broker = switchboard::Broker::start(config).expect("valid test config");
                broker
                    .register_handler(ECHO, Echo.start().recipient())
                    .await
                    .expect("register the echo handler");
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

    /// `ws://addr/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Graceful shutdown (sessions get 1012); waits for its report.
    pub async fn shutdown(mut self) -> ShutdownReport {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let report = self.report.take().expect("running");
        tokio::time::timeout(WAIT, report)
            .await
            .expect("shutdown in time")
            .expect("report")
    }

    /// Waits (bounded) until `/healthz` reports no session and no room.
    pub async fn wait_idle(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let health = http(self.addr, "GET", "/healthz").await.1;
            if health["sessions"] == 0 && health["rooms"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker not idle after {WAIT:?}: {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A minimal HTTP/1.1 request with the API key: (status, JSON body or Null).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        response
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("HTTP in time");
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The next state change satisfying `done`, within [`WAIT`]; panics on `Closed` unless
/// `done` accepts it.
pub async fn wait_state(states: &mut StateStream, done: impl Fn(&State) -> bool) -> State {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = tokio::time::timeout_at(deadline, states.next())
            .await
            .expect("state change in time")
            .expect("state stream open");
        if done(&state) {
            return state;
        }
        assert!(!state.is_closed(), "closed unexpectedly: {state:?}");
    }
}
