//! Several `switchboard` processes over one `redis-server` of the test's own: the Redis
//! engine as users run it.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{free_port, BrokerProcess};
use super::redis::RedisServer;
use super::{token, Client, SECRET, WAIT};

/// The API key of cluster nodes.
pub const KEY: &str = "cluster-test-api-key-0123456789";

/// One broker process of a cluster.
pub struct Node {
    /// The process (SIGKILLed on drop).
    pub process: BrokerProcess,
    /// Its loopback port.
    pub port: u16,
}

impl Node {
    /// `http://127.0.0.1:PORT{path}`.
    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `ws://127.0.0.1:PORT/ws`, without a token (the project's client sends it in a header).
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// The address of its listener.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Connects as `sub` (allowed on every room) and reads `system.connection.established`.
    pub async fn client(&self, sub: &str) -> (Client, Value) {
        let url = format!(
            "ws://127.0.0.1:{}/ws?token={}",
            self.port,
            token(sub, &["*"])
        );
        let mut client = Client::connect(&url).await;
        let established = client.recv_type("system.connection.established").await;
        (client, established)
    }

    /// An API call with the cluster's key: status and JSON body.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = awc::Client::builder().timeout(WAIT).finish();
        let req = client
            .request(method.parse().expect("method"), self.http(path))
            .insert_header(("Authorization", format!("Bearer {KEY}")));
        let mut resp = match body {
            Some(body) => req.send_json(&body).await,
            None => req.send().await,
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp.body().await.expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }

    /// `GET path` as text (e.g. the Prometheus exposition).
    pub async fn text(&self, path: &str) -> String {
        let client = awc::Client::builder().timeout(WAIT).finish();
        let mut resp = client
            .get(self.http(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let body = resp.body().await.expect("body");
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Polls `GET path` until `done` holds for the JSON body (another node's view catching
    /// up), at most 10 s; the last body.
    pub async fn api_until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = self.api("GET", path, None).await;
            if done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "node :{} GET {path} never satisfied the wait: {body}",
                self.port
            );
            // Another process's state, announced asynchronously: nothing to wait on.
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/readyz` until it answers `want` (200 or 503), at most 15 s.
    pub async fn wait_readyz(&self, want: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(1))
            .finish();
        loop {
            if let Ok(resp) = client.get(self.http("/readyz")).send().await {
                if resp.status().as_u16() == want {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node :{} did not answer /readyz {want} within 15 s:\n{}",
                self.port,
                self.process.log()
            );
            // Polling a state that has no event to wait on (another process's connection).
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A Redis server and broker nodes on it.
pub struct Cluster {
    /// The Redis server.
    pub redis: RedisServer,
    /// The nodes.
    pub nodes: Vec<Node>,
    dir: tempfile::TempDir,
    extra: String,
}

impl Cluster {
    /// `n` nodes, each ready (Redis reachable); `extra` is appended to every node's config.
    /// `None` when `redis-server` is not installed (and not required).
    pub async fn start(n: usize, extra: &str) -> Option<Cluster> {
        Self::on(RedisServer::start()?, n, extra).await
    }

    /// [`Cluster::start`] over a Redis that keeps what it acknowledged across restarts.
    pub async fn start_persistent(n: usize, extra: &str) -> Option<Cluster> {
        Self::on(RedisServer::start_persistent()?, n, extra).await
    }

    async fn on(redis: RedisServer, n: usize, extra: &str) -> Option<Cluster> {
        let mut cluster = Cluster {
            redis,
            nodes: Vec::new(),
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.to_owned(),
        };
        for _ in 0..n {
            cluster.add_node().await;
        }
        Some(cluster)
    }

    /// Starts one more node and waits until it is ready; its index.
    pub async fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let port = free_port();
        let config = self.dir.path().join(format!("node{index}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[server]
bind = "127.0.0.1:{port}"
drain_delay = "0s"
workers = 2

[auth]
hs256_secret = "{SECRET}"

[api]
keys = ["{KEY}"]
requests_per_second = 0

[limits]
messages_per_second = 100000
burst = 100000

[webhooks]
outbox_path = ""
allow = ["127.0.0.1/32"]
mode = "development"

[engine]
kind = "redis"

[redis]
url = "{url}"
prefix = "t"
max_reconnect_delay = "200ms"
presence_ttl = "1500ms"
command_timeout = "1s"

[namespaces.chat]
presence = true
{extra}
"#,
                url = self.redis.url(),
                extra = self.extra,
            ),
        )
        .expect("write node config");
        let mut process =
            BrokerProcess::spawn(&config, self.dir.path().join(format!("node{index}.log")));
        process
            .wait_ready(&format!("http://127.0.0.1:{port}"))
            .await;
        let node = Node { process, port };
        node.wait_readyz(200).await;
        self.nodes.push(node);
        index
    }
}
