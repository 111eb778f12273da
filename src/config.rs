//! Configuration: one struct tree, defaults, TOML file, `SWITCHBOARD_<SECTION>_<KEY>`
//! environment overrides, validation.
//!
//! Layering is defaults → file → environment. Every key is documented with its default in
//! `config.example.toml`; a test keeps that file and [`Config::default`] in step. Errors name
//! the key and, for the file, the line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The HS256 secret of dev mode. It is public on purpose: dev mode only binds loopback.
pub const DEV_HS256_SECRET: &str = "switchboard-dev-secret-not-for-production";

/// The API key of dev mode. Public on purpose, like [`DEV_HS256_SECRET`].
pub const DEV_API_KEY: &str = "switchboard-dev-api-key";

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a key has a bad value.
    #[error("{path}: {}line {line}: {message}", key.as_ref().map(|k| format!("key `{k}`, ")).unwrap_or_default())]
    File {
        /// The file.
        path: PathBuf,
        /// The dotted key, when known.
        key: Option<String>,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// An environment override has a bad value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable name.
        var: String,
        /// What was wrong.
        message: String,
    },
    /// The webhook outbox file cannot be used (damaged, unreadable, unwritable).
    #[error("webhook outbox {}: {message}", path.display())]
    Outbox {
        /// The file (`webhooks.outbox_path`).
        path: PathBuf,
        /// What is wrong and what to do about it.
        message: String,
    },
    /// The values parse but do not make a safe, working broker.
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What was wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener, origins and shutdown.
    pub server: ServerConfig,
    /// Token verification and anonymous access.
    pub auth: AuthConfig,
    /// Ping interval and stale-session timeout.
    pub heartbeat: HeartbeatConfig,
    /// Per-session limits.
    pub limits: LimitsConfig,
    /// Application handler dispatch.
    pub router: RouterConfig,
    /// Room history kept for replay.
    pub history: HistoryConfig,
    /// Session resume window.
    pub resume: ResumeConfig,
    /// Protocol conformance aids (off by default).
    pub conformance: ConformanceConfig,
    /// The server HTTP API.
    pub api: ApiConfig,
    /// Per-namespace options (`[namespaces.conversation]`); a room's namespace is the part
    /// of its name before the first `:`.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Outbound webhooks: outbox, retries, SSRF allowlist, configured endpoints.
    pub webhooks: WebhooksConfig,
    /// Where rooms' shared state lives: this process, or Redis for several nodes.
    pub engine: EngineConfig,
    /// The Redis server of the Redis engine.
    pub redis: RedisConfig,
    /// WebSocket endpoints bound to rooms (`[[endpoints]]`), served next to `server.ws_path`.
    pub endpoints: Vec<crate::endpoint::EndpointConfig>,
    /// Bridges between rooms and other messaging systems (`[[bridge.redis]]`).
    pub bridge: BridgeConfig,
    /// The ASAP agent protocol: `/asap/ws`, `POST /asap`, the manifest.
    pub asap: AsapConfig,
    /// Agent tasks: `/api/agent`, workers, approvals (docs/TASKS.md).
    pub tasks: TasksConfig,
    /// The web console at `/console/` (off by default; on in dev mode).
    pub console: ConsoleConfig,
    /// Set when no config file was given: loopback only, anonymous allowed, dev secret.
    #[serde(skip)]
    pub dev_mode: bool,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Browser origins allowed to open WebSockets. Empty: only requests without an `Origin`
    /// header, or whose `http(s)` origin is one of `public_urls` or a loopback host. `"*"`
    /// allows every origin.
    pub allowed_origins: Vec<String>,
    /// The URLs browsers reach this broker at (`https://chat.example.com`): with no
    /// `allowed_origins`, pages served from these origins may open WebSockets.
    pub public_urls: Vec<String>,
    /// How long graceful shutdown waits for sessions to close.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// At shutdown, how long the broker keeps serving with `/readyz` answering 503 before
    /// it closes sessions and stops, so load balancers see it leave.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
    /// Main WebSocket endpoint.
    pub ws_path: String,
    /// PEM file with the listener's certificate chain (the server's certificate first).
    /// With `tls_key`, the broker speaks HTTPS and WSS only; both empty: plain HTTP.
    pub tls_cert: String,
    /// PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: String,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it, without context
    /// takeover: no deflate state is kept per connection (docs/PERFORMANCE.md). Off by
    /// default: compression costs CPU on every message, and loopback or LAN clients gain
    /// nothing from it.
    pub permessage_deflate: bool,
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Allow connections without a token.
    pub anonymous: bool,
    /// Accepted JWT algorithms; a token signed with any other is rejected.
    pub algorithms: Vec<String>,
    /// Shared secret for HS256/HS384/HS512.
    pub hs256_secret: String,
    /// Path to a PEM public key for RS256/RS384/RS512.
    pub rsa_public_key_file: String,
    /// Path to a PEM public key for ES256/ES384.
    pub ec_public_key_file: String,
    /// Clock skew allowed for `exp` and `nbf`.
    #[serde(with = "duration")]
    pub leeway: Duration,
    /// Required `iss`, when set.
    pub issuer: String,
    /// Required `aud`, when set.
    pub audience: String,
    /// Cookie the token may arrive in.
    pub cookie_name: String,
    /// URL of a JSON Web Key Set (`https://idp.example/.well-known/jwks.json`); empty: off.
    /// Tokens with a `kid` the static keys do not verify are checked with that key of the set.
    pub jwks_url: String,
    /// How often the key set is fetched again.
    #[serde(with = "duration")]
    pub jwks_refresh: Duration,
    /// The least time between two fetches of the key set, whatever asks for them (an
    /// unknown `kid`, a failed fetch being retried, the schedule).
    #[serde(with = "duration")]
    pub jwks_min_refresh_interval: Duration,
}

/// `[heartbeat]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// How often the broker sends `system.ping`.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// A session with no inbound frame for this long is closed with 4010.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest inbound frame or message; bigger closes with 1009.
    pub max_frame_bytes: usize,
    /// Sustained inbound frames per second per session.
    pub messages_per_second: u32,
    /// Inbound burst allowance per session.
    pub burst: u32,
    /// Rate-limited frames within `abuse_window` that close the session with 4008.
    pub abuse_threshold: u32,
    /// Window for counting rate-limited frames.
    #[serde(with = "duration")]
    pub abuse_window: Duration,
    /// Rooms one session may be in (its personal room not counted).
    pub max_rooms_per_session: usize,
    /// Sessions one user may have open at once; 0: no limit.
    pub max_sessions_per_user: usize,
    /// Rooms this broker runs at once (the automatic `broadcast` and personal rooms not
    /// counted); 0: no limit.
    pub max_rooms: usize,
    /// Deepest nesting of arrays and objects in a payload.
    pub max_json_depth: usize,
    /// Frames queued for one session before it is closed as a slow consumer (4009).
    pub outbound_queue_messages: usize,
    /// Bytes queued for one session before it is closed as a slow consumer (4009).
    pub outbound_queue_bytes: usize,
    /// WebSocket connections this broker holds at once; a handshake beyond it gets HTTP
    /// 503 before the upgrade. 0: no limit.
    pub max_connections: usize,
    /// WebSocket connections one IP address holds at once; beyond it, HTTP 429. 0: no
    /// limit.
    pub max_connections_per_ip: usize,
    /// WebSocket handshakes per second one IP address may start (token bucket); beyond
    /// it, HTTP 429 with `Retry-After`. 0: no limit.
    pub handshakes_per_second_per_ip: u32,
    /// The burst of that bucket (0: the same as the rate).
    pub handshake_burst_per_ip: u32,
    /// How long a write to a WebSocket may wait on a peer that does not read, and how long
    /// a close may take, before the TCP connection is reset.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    /// How long a client has to send a request's headers (a WebSocket handshake
    /// included) once its connection is open; a slower one gets 408 and is closed.
    #[serde(with = "duration")]
    pub request_header_timeout: Duration,
}

/// `[router]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// How long a handler may take before the caller gets `timeout`.
    #[serde(with = "duration")]
    pub handler_timeout: Duration,
    /// Application requests per second per user; 0 disables this limit.
    pub requests_per_second: u32,
    /// Whether anonymous sessions may call application handlers.
    pub allow_anonymous: bool,
}

/// `[history]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept per room.
    pub size: usize,
    /// Bytes of messages kept per room; the oldest go first when a new one would pass it.
    pub max_bytes: usize,
    /// How long messages are kept, and how long an idle room keeps its sequence.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Client message ids remembered per room, so a retried publish is not delivered twice.
    pub dedup_size: usize,
    /// Bytes of remembered ids (with their publishers) per room.
    pub dedup_max_bytes: usize,
}

/// `[api]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// API keys accepted as `Authorization: Bearer <key>` (an admin JWT works too).
    pub keys: Vec<String>,
    /// Requests per second per caller; 0 disables the limit.
    pub requests_per_second: u32,
    /// Largest request body; bigger gets 413.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive in full; slower gets 408.
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// Origins allowed to call the API from a browser (CORS); `"*"` for any.
    pub cors_origins: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            keys: Vec::new(),
            requests_per_second: 100,
            max_body_bytes: 64 * 1024,
            body_timeout: Duration::from_secs(10),
            cors_origins: Vec::new(),
        }
    }
}

/// `[namespaces.<name>]`: options for the rooms `<name>:…`. Unset history keys fall back
/// to `[history]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Messages kept per room (default: `history.size`).
    pub history_size: Option<usize>,
    /// How long messages are kept (default: `history.ttl`).
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub history_ttl: Option<Duration>,
    /// Track who is in each room and send `presence.join` / `presence.leave`.
    pub presence: bool,
    /// Whether clients may publish over WebSocket (the HTTP API always may).
    pub client_publish: bool,
    /// Whether anonymous sessions may join.
    pub anonymous: bool,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            history_size: None,
            history_ttl: None,
            presence: false,
            client_publish: true,
            anonymous: true,
        }
    }
}

/// `[webhooks]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// `production` calls `https://` URLs only; `development` allows `http://` too.
    pub mode: WebhookMode,
    /// The SQLite outbox; `""` keeps it in memory (pending deliveries die with the process).
    pub outbox_path: String,
    /// `normal` survives a crash of the broker; `full` also survives power loss (one fsync
    /// per accepted event).
    pub synchronous: crate::webhooks::outbox::Synchronous,
    /// What a start does with a damaged outbox file: `refuse` to start (its pending
    /// deliveries may still be recovered from it), or `move_aside` (rename it next to
    /// itself and start with an empty outbox).
    pub on_corrupt_outbox: OnCorruptOutbox,
    /// Deadline of one delivery attempt.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Retries after the first attempt before a delivery is dead-lettered.
    pub max_retries: u32,
    /// Delay before retry n (1-based); the last entry repeats.
    #[serde(with = "duration_list")]
    pub backoff: Vec<Duration>,
    /// Each delay is scaled by a random factor in `[1 - jitter, 1 + jitter]`, so endpoints
    /// that failed together do not retry in lockstep.
    pub jitter: f64,
    /// Cap on a receiver's `Retry-After`.
    #[serde(with = "duration")]
    pub max_retry_after: Duration,
    /// An endpoint failing continuously for this long is disabled (re-enable with PATCH).
    #[serde(with = "duration")]
    pub disable_after: Duration,
    /// Default per-endpoint deliveries per second (delayed, never dropped).
    pub rate_limit_per_s: u32,
    /// Name of the body-HMAC header (`sha256=<hex>`); `""` leaves it out.
    pub body_hmac_header: String,
    /// SSRF allowlist: CIDRs or exact host names exempt from the address checks.
    pub allow: Vec<crate::webhooks::ssrf::AllowRule>,
    /// PEM file of CA certificates trusted for `https://` receivers, besides the public
    /// roots (a private CA); `""` for the public roots only.
    pub ca_file: String,
    /// PEM certificate chain presented to receivers that ask for one (mutual TLS); with
    /// `client_key_file`.
    pub client_cert_file: String,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: String,
    /// Registering an endpoint for a URL another endpoint already has: `warn` (log it and
    /// say so in the answer) or `refuse` (409).
    pub duplicate_urls: DuplicateUrls,
    /// Delivered deliveries are kept this long (for `GET /api/webhooks/{id}/deliveries`).
    #[serde(with = "duration")]
    pub retention: Duration,
    /// Pending deliveries of a *disabled* endpoint older than this are dropped (counted in
    /// `switchboard_webhook_expired_total`), so a paused endpoint nobody re-enables does not
    /// grow the outbox without end.
    #[serde(with = "duration")]
    pub disabled_backlog_ttl: Duration,
    /// Endpoints defined in the file, by id (`[webhooks.endpoints.<id>]`).
    pub endpoints: BTreeMap<String, WebhookEndpointConfig>,
}

/// See [`WebhooksConfig::on_corrupt_outbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCorruptOutbox {
    /// Do not start; the error names the file and how to recover.
    #[default]
    Refuse,
    /// Rename the file to `<file>.corrupt-<unix time>` and start with an empty outbox.
    MoveAside,
}

/// See [`WebhooksConfig::duplicate_urls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicateUrls {
    /// Register it, and warn.
    #[default]
    Warn,
    /// Answer 409.
    Refuse,
}

/// Whether webhook URLs must be `https://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookMode {
    /// `https://` only.
    #[default]
    Production,
    /// `http://` allowed (local receivers); dev mode's default.
    Development,
}

/// `[webhooks.endpoints.<id>]`: an endpoint that exists because the file says so. It is
/// created or updated at every start; its pending deliveries survive restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointConfig {
    /// Where deliveries are POSTed.
    pub url: String,
    /// `whsec_…`; generated and stored on first start when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Event types delivered.
    pub events: Vec<String>,
    /// Room globs for room events; default every room.
    #[serde(default = "all_rooms")]
    pub rooms: Vec<String>,
    /// Deliveries per second (default `webhooks.rate_limit_per_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<u32>,
}

fn all_rooms() -> Vec<String> {
    vec!["*".into()]
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            mode: WebhookMode::Production,
            outbox_path: "switchboard-webhooks.db".into(),
            synchronous: crate::webhooks::outbox::Synchronous::Normal,
            on_corrupt_outbox: OnCorruptOutbox::Refuse,
            timeout: Duration::from_secs(10),
            max_retries: 5,
            backoff: [1, 2, 4, 8, 16].map(Duration::from_secs).to_vec(),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(300),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            rate_limit_per_s: 10,
            body_hmac_header: crate::webhooks::signing::DEFAULT_BODY_HMAC_HEADER.into(),
            allow: Vec::new(),
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            duplicate_urls: DuplicateUrls::Warn,
            retention: Duration::from_secs(7 * 24 * 3600),
            disabled_backlog_ttl: Duration::from_secs(7 * 24 * 3600),
            endpoints: BTreeMap::new(),
        }
    }
}

/// What applies to one room, resolved from `[history]` and its namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomPolicy {
    /// Messages kept.
    pub history_size: usize,
    /// Bytes of messages kept.
    pub history_max_bytes: usize,
    /// How long they are kept.
    pub history_ttl: Duration,
    /// Client ids remembered for idempotent publish.
    pub dedup_size: usize,
    /// Bytes of remembered ids.
    pub dedup_max_bytes: usize,
    /// Presence on.
    pub presence: bool,
    /// Clients may publish.
    pub client_publish: bool,
    /// Anonymous sessions may join.
    pub anonymous: bool,
}

/// `[resume]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResumeConfig {
    /// How long a dropped session's state is kept for resume.
    #[serde(with = "duration")]
    pub ttl: Duration,
}

/// `[engine]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `memory` (one node, no dependency) or `redis` (several nodes over one Redis).
    pub kind: EngineKind,
}

/// [`EngineConfig::kind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// Rooms live in this process.
    #[default]
    Memory,
    /// Rooms live in Redis (`[redis]`); every broker on the same Redis and prefix serves
    /// the same rooms.
    Redis,
}

/// `[redis]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, `rediss://` for TLS, or
    /// `redis+unix:///path/to/socket`.
    pub url: String,
    /// Multiplexed connections for commands (publishes and reads are spread over them).
    pub pool_size: usize,
    /// Prepended to every key and channel, so several clusters can share one Redis.
    pub prefix: String,
    /// A command not answered within this fails with `unavailable`.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Longest wait between two reconnection attempts (they start at 100 ms and double).
    #[serde(with = "duration")]
    pub max_reconnect_delay: Duration,
    /// A connection stays present this long after its node last refreshed it (each node
    /// refreshes every third of it): the users of a node that dies leave after this.
    #[serde(with = "duration")]
    pub presence_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            pool_size: 2,
            prefix: "switchboard".into(),
            command_timeout: Duration::from_secs(2),
            max_reconnect_delay: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(30),
        }
    }
}

/// `[bridge]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// Redis pub/sub bridges (`[[bridge.redis]]`).
    pub redis: Vec<RedisBridgeConfig>,
}

/// One Redis pub/sub bridge (`[[bridge.redis]]`): messages PUBLISHed on its channels enter
/// rooms, and optionally messages published in rooms go out to Redis channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisBridgeConfig {
    /// Names the bridge in metrics, logs and its leader key; `redis<N>` (its position) when
    /// empty.
    pub name: String,
    /// The Redis server; `redis.url` when empty.
    pub url: String,
    /// Channels to carry into rooms; a name with `*`, `?` or `[` is a pattern
    /// (PSUBSCRIBE), e.g. `response:*`.
    pub channels: Vec<String>,
    /// The room of a channel's messages: `{channel}` is the channel's name.
    pub room: String,
    /// What to do with a message that is not JSON: `wrap` it as a JSON string, or `drop` it
    /// (each is counted and logged either way).
    pub non_json: NonJson,
    /// Rooms (glob patterns) whose messages go out to Redis; none when empty.
    pub publish_rooms: Vec<String>,
    /// The channel a room's message goes out on: `{room}` is the room's name.
    pub publish_channel: String,
    /// What goes out: the message's `payload` alone, or an `envelope` with `room`, `seq`,
    /// `id`, `user` and `payload`.
    pub publish_format: PublishFormat,
    /// Messages waiting to go out; a publish that finds the queue full is dropped and
    /// counted, never waited for.
    pub publish_queue: usize,
    /// With the Redis engine one broker carries messages in (so each enters its room once):
    /// the leader, which holds a key in Redis for this long and renews it every third of
    /// it. A leader that has not renewed for two thirds of it stops carrying.
    #[serde(with = "duration")]
    pub leader_lease: Duration,
}

impl RedisBridgeConfig {
    /// The bridge's name: its own, or `redis<index>`.
    pub fn name_or(&self, index: usize) -> String {
        if self.name.is_empty() {
            format!("redis{index}")
        } else {
            self.name.clone()
        }
    }

    /// The bridge's Redis URL: its own, or the engine's.
    pub fn url_or<'a>(&'a self, redis: &'a RedisConfig) -> &'a str {
        if self.url.is_empty() {
            &redis.url
        } else {
            &self.url
        }
    }
}

impl Default for RedisBridgeConfig {
    fn default() -> Self {
        RedisBridgeConfig {
            name: String::new(),
            url: String::new(),
            channels: Vec::new(),
            room: "{channel}".into(),
            non_json: NonJson::Wrap,
            publish_rooms: Vec::new(),
            publish_channel: "{room}".into(),
            publish_format: PublishFormat::Payload,
            publish_queue: 10_000,
            leader_lease: Duration::from_secs(3),
        }
    }
}

/// [`RedisBridgeConfig::non_json`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonJson {
    /// Published as a JSON string holding the text (bytes that are not UTF-8 become U+FFFD).
    #[default]
    Wrap,
    /// Not published.
    Drop,
}

/// [`RedisBridgeConfig::publish_format`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishFormat {
    /// The payload's JSON, as published.
    #[default]
    Payload,
    /// `{"room","seq","id","user","payload"}`.
    Envelope,
}

/// `[conformance]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConformanceConfig {
    /// Path of an echo WebSocket route for the Autobahn testsuite; empty disables it.
    pub echo_path: String,
    /// Largest message the echo route accepts.
    pub echo_max_message_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1:8000".into(),
            workers: 0,
            allowed_origins: Vec::new(),
            public_urls: Vec::new(),
            shutdown_timeout: Duration::from_secs(10),
            drain_delay: Duration::from_secs(1),
            ws_path: "/ws".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            permessage_deflate: false,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: false,
            algorithms: vec!["HS256".into()],
            hs256_secret: String::new(),
            rsa_public_key_file: String::new(),
            ec_public_key_file: String::new(),
            leeway: Duration::from_secs(30),
            issuer: String::new(),
            audience: String::new(),
            cookie_name: "switchboard_token".into(),
            jwks_url: String::new(),
            jwks_refresh: Duration::from_secs(600),
            jwks_min_refresh_interval: Duration::from_secs(30),
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(75),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 64 * 1024,
            messages_per_second: 100,
            burst: 200,
            abuse_threshold: 50,
            abuse_window: Duration::from_secs(10),
            max_rooms_per_session: 100,
            max_sessions_per_user: 100,
            max_rooms: 100_000,
            max_json_depth: 64,
            outbound_queue_messages: 1024,
            outbound_queue_bytes: 4 * 1024 * 1024,
            max_connections: 0,
            max_connections_per_ip: 0,
            handshakes_per_second_per_ip: 0,
            handshake_burst_per_ip: 0,
            request_header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            handler_timeout: Duration::from_secs(30),
            requests_per_second: 0,
            allow_anonymous: false,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 100,
            max_bytes: 1024 * 1024,
            ttl: Duration::from_secs(300),
            dedup_size: 1000,
            dedup_max_bytes: 128 * 1024,
        }
    }
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            ttl: Duration::from_secs(120),
        }
    }
}

/// `[asap]`: the broker as an ASAP server (docs/ASAP.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AsapConfig {
    /// Serve `/asap/ws`, `POST /asap`, `POST /asap/stream` and the `/.well-known/asap/`
    /// manifest and health.
    pub enabled: bool,
    /// The broker's own agent URN: the manifest's `id`, the sender of its answers.
    pub agent_id: String,
    /// The manifest's `name`.
    pub name: String,
    /// The manifest's `description`.
    pub description: String,
    /// The base URL the manifest advertises (`https://agents.example.com`); empty: the
    /// scheme and host the manifest request came in on.
    pub public_url: String,
    /// Serve the built-in `echo` skill (for conformance runs and smoke tests).
    pub echo_skill: bool,
    /// How long a request forwarded to a connected agent waits for its reply.
    #[serde(with = "duration")]
    pub route_timeout: Duration,
    /// A WebSocket connection that sends an envelope becomes the route to its `sender` URN
    /// unless another connection already serves it, so agents on the real client are
    /// reachable without a registration call.
    pub learn_senders: bool,
    /// Most requests in one `POST /asap` batch.
    pub max_batch: usize,
    /// Largest `POST /asap` body, after decompression.
    pub max_request_bytes: usize,
    /// Replay nonces remembered (the most recent ones, each for 10 minutes).
    pub nonce_capacity: usize,
    /// `X-Idempotency-Key` answers remembered.
    pub idempotency_capacity: usize,
    /// How long a remembered answer is given again for a retried request.
    #[serde(with = "duration")]
    pub idempotency_ttl: Duration,
}

impl Default for AsapConfig {
    fn default() -> Self {
        AsapConfig {
            enabled: true,
            agent_id: "urn:asap:agent:switchboard".into(),
            name: "switchboard".into(),
            description: "switchboard message broker: routes ASAP envelopes between agents and \
                          handler actors"
                .into(),
            public_url: String::new(),
            echo_skill: false,
            route_timeout: Duration::from_secs(30),
            learn_senders: true,
            max_batch: 50,
            max_request_bytes: 1024 * 1024,
            nonce_capacity: 100_000,
            idempotency_capacity: 10_000,
            idempotency_ttl: Duration::from_secs(600),
        }
    }
}

/// `[console]`: the web console the binary serves at `/console/` (docs/CLIENTS.md).
///
/// Its pages are public (they hold no data); everything they show comes from the HTTP API
/// with the API key or admin token the operator types in, so turning it on opens no data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console's pages at `/console/`.
    pub enabled: bool,
}

/// `[tasks]`: the agent task API (docs/TASKS.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// Serve `/api/agent` and the `task.*` worker protocol.
    pub enabled: bool,
    /// Where tasks live: `sqlite` (embedded, `sqlite_path`) or `postgres` (`postgres_url`).
    pub store: TaskStoreKind,
    /// PostgreSQL connection (`postgres://user:password@host/db` or `host=… dbname=…`),
    /// for `store = "postgres"`.
    pub postgres_url: String,
    /// The SQLite file holding tasks, steps, approvals, logs and the audit trail; `""`
    /// keeps them in memory (nothing survives a restart).
    pub sqlite_path: String,
    /// Token subjects (`sub` glob patterns) that may work on tasks (`task.*` messages)
    /// besides admin tokens. A worker sees and answers every user's tasks, so by default
    /// only admin tokens may (dev mode: any token).
    pub worker_subjects: Vec<String>,
    /// How long a worker holds a task without sending anything before it goes back to the
    /// queue.
    #[serde(with = "duration")]
    pub lease: Duration,
    /// How long an approval request waits for the user; then it is rejected.
    #[serde(with = "duration")]
    pub approval_timeout: Duration,
    /// Unfinished tasks (pending, running, awaiting approval) one user may have.
    pub max_active_per_user: usize,
    /// Task API requests per second per user; 0 disables the limit.
    pub requests_per_second: u32,
    /// Events kept in a task's room, for late tabs, reconnects and polling.
    pub history_size: usize,
    /// How long a task's events are kept.
    #[serde(with = "duration")]
    pub history_ttl: Duration,
    /// Tasks whose owner the join rule of `task:{id}` rooms remembers (every unfinished one
    /// and the most recently finished).
    pub owners_capacity: usize,
}

/// `[tasks] store`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStoreKind {
    /// An SQLite file (or memory) in this process.
    #[default]
    Sqlite,
    /// A PostgreSQL database, which several brokers can share.
    Postgres,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            enabled: true,
            store: TaskStoreKind::Sqlite,
            postgres_url: String::new(),
            worker_subjects: Vec::new(),
            sqlite_path: "switchboard-tasks.db".into(),
            lease: Duration::from_secs(30),
            approval_timeout: Duration::from_secs(300),
            max_active_per_user: 10,
            requests_per_second: 20,
            history_size: 1000,
            history_ttl: Duration::from_secs(7 * 24 * 3600),
            owners_capacity: 100_000,
        }
    }
}

impl Default for ConformanceConfig {
    fn default() -> Self {
        ConformanceConfig {
            echo_path: String::new(),
            echo_max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Dev mode: what `cargo run` gets with no config file.
    pub fn dev() -> Config {
        let mut config = Config {
            dev_mode: true,
            ..Config::default()
        };
        config.auth.anonymous = true;
        config.auth.hs256_secret = DEV_HS256_SECRET.into();
        config.router.allow_anonymous = true;
        config.server.allowed_origins = vec!["*".into()];
        config.api.keys = vec![DEV_API_KEY.into()];
        config.webhooks.mode = WebhookMode::Development;
        // An agent trying the broker gets an answer without writing a handler first, and
        // the demo task worker may work with a plain token.
        config.asap.echo_skill = true;
        config.tasks.worker_subjects = vec!["*".into()];
        // Someone trying the broker can watch it at once; its data still needs the dev key.
        config.console.enabled = true;
        config
    }

    /// Loads `path` (or dev mode when `None`), applies environment overrides, validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                Config::from_toml_with_env(&text, path, &env)
            }
            None => Config::dev().with_env(&env),
        }
    }

    /// Parses TOML text (named `path` in errors), then applies `env` overrides and validates.
    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let config = parse_file(text, path)?;
        config.with_env(env).map_err(|err| match err {
            // A value that parses but does not work: say where it came from.
            ConfigError::Invalid { key, message } => {
                let var = format!("{ENV_PREFIX}{}", key.replacen('.', "_", 1).to_uppercase());
                if env.iter().any(|(name, _)| *name == var) {
                    ConfigError::Env {
                        var,
                        message: format!("`{key}`: {message}"),
                    }
                } else if let Some(line) = line_of_key(text, &key) {
                    ConfigError::File {
                        path: path.to_owned(),
                        key: Some(key),
                        line,
                        message,
                    }
                } else {
                    ConfigError::Invalid { key, message }
                }
            }
            other => other,
        })
    }

    /// Applies `SWITCHBOARD_<SECTION>_<KEY>` overrides, then validates.
    fn with_env(self, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let dev_mode = self.dev_mode;
        let mut config = self;
        let overrides = env_overrides(env)?;
        if !overrides.is_empty() {
            let mut table = toml::Table::try_from(&config).map_err(|e| ConfigError::Invalid {
                key: "(all)".into(),
                message: e.to_string(),
            })?;
            for (var, section, key, value) in &overrides {
                let section_table = table
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let Some(section_table) = section_table.as_table_mut() else {
                    return Err(ConfigError::Env {
                        var: var.clone(),
                        message: format!("`{section}` is not a section"),
                    });
                };
                section_table.insert(key.clone(), value.clone());
                // Check each override alone so the error names the variable.
                let single = toml::Value::Table(table.clone());
                if let Err(err) = serde_path_to_error::deserialize::<_, Config>(single) {
                    return Err(ConfigError::Env {
                        var: var.clone(),
                        message: format!("{}: {}", err.path(), err.inner()),
                    });
                }
            }
            config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
                |err: serde_path_to_error::Error<toml::de::Error>| ConfigError::Invalid {
                    key: err.path().to_string(),
                    message: err.inner().to_string(),
                },
            )?;
        }
        config.dev_mode = dev_mode;
        config.validate()?;
        Ok(config)
    }

    /// Checks that the configuration makes a safe, working broker.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let bind = self.bind_addr()?;
        if !self.server.ws_path.starts_with('/') {
            return Err(invalid("server.ws_path", "must start with `/`".into()));
        }
        // The files themselves are read when the broker starts (and by `check-config`).
        match (
            self.server.tls_cert.is_empty(),
            self.server.tls_key.is_empty(),
        ) {
            (false, true) => {
                return Err(invalid(
                    "server.tls_key",
                    "is needed with server.tls_cert (both or neither)".into(),
                ))
            }
            (true, false) => {
                return Err(invalid(
                    "server.tls_cert",
                    "is needed with server.tls_key (both or neither)".into(),
                ))
            }
            _ => {}
        }
        for public in &self.server.public_urls {
            let ok = url::Url::parse(public)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !ok {
                return Err(invalid(
                    "server.public_urls",
                    format!("`{public}` is not an http:// or https:// URL"),
                ));
            }
        }
        if !bind.ip().is_loopback() {
            if self.dev_mode {
                return Err(invalid(
                    "server.bind",
                    format!("dev mode (no config file) only binds loopback, not {bind}; pass --config with [auth] set"),
                ));
            }
            if self.auth.anonymous || !self.auth_configured() {
                return Err(invalid(
                    "server.bind",
                    format!("refusing to listen on non-loopback {bind} without authentication: configure a key in [auth] and set auth.anonymous = false"),
                ));
            }
        }
        // Every listed algorithm needs its key, unless the broker is anonymous-only.
        let needs_keys = self.auth_configured() || !self.auth.anonymous;
        for alg in &self.auth.algorithms {
            let Some(family) = crate::auth::algorithm_family(alg) else {
                return Err(invalid(
                    "auth.algorithms",
                    format!("unsupported algorithm `{alg}` (use HS256/384/512, RS256/384/512, ES256/384)"),
                ));
            };
            // A key set serves RSA and EC keys (never shared secrets).
            let jwks = !self.auth.jwks_url.is_empty();
            let (key, present) = match family {
                crate::auth::KeyFamily::Hmac => {
                    ("auth.hs256_secret", !self.auth.hs256_secret.is_empty())
                }
                crate::auth::KeyFamily::Rsa => (
                    "auth.rsa_public_key_file",
                    jwks || !self.auth.rsa_public_key_file.is_empty(),
                ),
                crate::auth::KeyFamily::Ec => (
                    "auth.ec_public_key_file",
                    jwks || !self.auth.ec_public_key_file.is_empty(),
                ),
            };
            if needs_keys && !present {
                let hint = if jwks {
                    "; auth.jwks_url only serves RSA and EC keys: list the algorithms your identity provider signs with, e.g. algorithms = [\"RS256\"]"
                } else {
                    "; `switchboard genconfig FILE` writes a config with a generated secret"
                };
                return Err(invalid(key, format!("required by algorithm {alg} in auth.algorithms (or set auth.anonymous = true on a loopback address){hint}")));
            }
        }
        if !self.auth.jwks_url.is_empty() {
            let ok = url::Url::parse(&self.auth.jwks_url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !ok {
                return Err(invalid(
                    "auth.jwks_url",
                    format!("`{}` is not an http:// or https:// URL", self.auth.jwks_url),
                ));
            }
        }
        for (key, value) in [
            ("auth.jwks_refresh", self.auth.jwks_refresh),
            (
                "auth.jwks_min_refresh_interval",
                self.auth.jwks_min_refresh_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero".into()));
            }
        }
        if !self.auth.hs256_secret.is_empty() && self.auth.hs256_secret.len() < 16 {
            return Err(invalid(
                "auth.hs256_secret",
                "must be at least 16 bytes".into(),
            ));
        }
        if self.heartbeat.interval.is_zero() {
            return Err(invalid(
                "heartbeat.interval",
                "must be greater than zero".into(),
            ));
        }
        if self.heartbeat.timeout <= self.heartbeat.interval {
            return Err(invalid(
                "heartbeat.timeout",
                "must be longer than heartbeat.interval".into(),
            ));
        }
        let positive = [
            ("limits.max_frame_bytes", self.limits.max_frame_bytes),
            (
                "limits.messages_per_second",
                self.limits.messages_per_second as usize,
            ),
            ("limits.burst", self.limits.burst as usize),
            (
                "limits.abuse_threshold",
                self.limits.abuse_threshold as usize,
            ),
            (
                "limits.max_rooms_per_session",
                self.limits.max_rooms_per_session,
            ),
            ("limits.max_json_depth", self.limits.max_json_depth),
            (
                "limits.outbound_queue_messages",
                self.limits.outbound_queue_messages,
            ),
            (
                "limits.outbound_queue_bytes",
                self.limits.outbound_queue_bytes,
            ),
            ("history.size", self.history.size),
            ("history.max_bytes", self.history.max_bytes),
            ("history.dedup_size", self.history.dedup_size),
            ("history.dedup_max_bytes", self.history.dedup_max_bytes),
            (
                "conformance.echo_max_message_bytes",
                self.conformance.echo_max_message_bytes,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than zero".into()));
            }
        }
        // actix-web reads a zero header timeout as "none": a slowloris client could then
        // hold a connection forever.
        if self.limits.write_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "limits.write_timeout",
                "must be at least 100ms".into(),
            ));
        }
        if self.limits.request_header_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "limits.request_header_timeout",
                "must be at least 100ms".into(),
            ));
        }
        if self.api.keys.iter().any(|k| k.len() < 16) {
            return Err(invalid(
                "api.keys",
                "every key must be at least 16 characters".into(),
            ));
        }
        if let Some(i) = self.api.keys.iter().position(|k| k.trim() != k) {
            return Err(invalid(
                "api.keys",
                format!("key #{i} has leading or trailing whitespace, which no Authorization header can carry"),
            ));
        }
        for (name, ns) in &self.namespaces {
            if ns.history_size == Some(0) {
                return Err(invalid(
                    &format!("namespaces.{name}.history_size"),
                    "must be greater than zero".into(),
                ));
            }
        }
        self.validate_engine()?;
        self.validate_webhooks()?;
        self.validate_endpoints()?;
        self.validate_bridges()?;
        self.validate_asap()?;
        self.validate_tasks()?;
        if !self.conformance.echo_path.is_empty() && !self.conformance.echo_path.starts_with('/') {
            return Err(invalid(
                "conformance.echo_path",
                "must start with `/`".into(),
            ));
        }
        Ok(())
    }

    fn validate_tasks(&self) -> Result<(), ConfigError> {
        let tasks = &self.tasks;
        if tasks.enabled && tasks.store == TaskStoreKind::Postgres && tasks.postgres_url.is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "tasks.postgres_url".into(),
                message: "store = \"postgres\" needs a connection URL".into(),
            });
        }
        for (key, zero) in [
            ("tasks.lease", tasks.lease.is_zero()),
            ("tasks.approval_timeout", tasks.approval_timeout.is_zero()),
            ("tasks.max_active_per_user", tasks.max_active_per_user == 0),
            ("tasks.history_size", tasks.history_size == 0),
            ("tasks.owners_capacity", tasks.owners_capacity == 0),
        ] {
            if zero {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    message: "must be more than 0".into(),
                });
            }
        }
        Ok(())
    }

    fn validate_asap(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let asap = &self.asap;
        if !crate::asap::envelope::valid_agent_urn(&asap.agent_id) {
            return Err(invalid(
                "asap.agent_id",
                format!(
                    "`{}` is not an agent URN: use urn:asap:agent:<name> (a-z 0-9 -)",
                    asap.agent_id
                ),
            ));
        }
        if !asap.public_url.is_empty()
            && !url::Url::parse(&asap.public_url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return Err(invalid(
                "asap.public_url",
                format!("`{}` is not an http(s) URL", asap.public_url),
            ));
        }
        for (key, value) in [
            ("asap.max_batch", asap.max_batch),
            ("asap.max_request_bytes", asap.max_request_bytes),
            ("asap.nonce_capacity", asap.nonce_capacity),
            ("asap.idempotency_capacity", asap.idempotency_capacity),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if asap.route_timeout.is_zero() {
            return Err(invalid("asap.route_timeout", "must be more than 0".into()));
        }
        Ok(())
    }

    fn validate_engine(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        if self.engine.kind != EngineKind::Redis {
            return Ok(());
        }
        let r = &self.redis;
        if let Err(err) = redis::Client::open(r.url.as_str()) {
            return Err(invalid(
                "redis.url",
                format!(
                    "not a Redis URL (redis://host:port, rediss://, redis+unix:///path): {err}"
                ),
            ));
        }
        if r.pool_size == 0 {
            return Err(invalid("redis.pool_size", "must be at least 1".into()));
        }
        if r.prefix.is_empty() || r.prefix.contains(char::is_whitespace) {
            return Err(invalid(
                "redis.prefix",
                "must be non-empty, without spaces".into(),
            ));
        }
        if r.command_timeout.is_zero() {
            return Err(invalid(
                "redis.command_timeout",
                "must be greater than zero".into(),
            ));
        }
        if r.presence_ttl < Duration::from_millis(300) {
            return Err(invalid(
                "redis.presence_ttl",
                "must be at least 300ms".into(),
            ));
        }
        if r.max_reconnect_delay < Duration::from_millis(100) {
            return Err(invalid(
                "redis.max_reconnect_delay",
                "must be at least 100ms".into(),
            ));
        }
        Ok(())
    }

    fn validate_endpoints(&self) -> Result<(), ConfigError> {
        let mut paths = std::collections::HashSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            endpoint
                .compile()
                .map_err(|(field, message)| ConfigError::Invalid {
                    key: format!("endpoints[{i}].{field}"),
                    message,
                })?;
            if !paths.insert(endpoint.path.as_str()) {
                return Err(ConfigError::Invalid {
                    key: format!("endpoints[{i}].path"),
                    message: format!("`{}` is served by an earlier endpoint", endpoint.path),
                });
            }
        }
        Ok(())
    }

    fn validate_bridges(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, bridge) in self.bridge.redis.iter().enumerate() {
            let invalid = |field: &str, message: String| ConfigError::Invalid {
                key: format!("bridge.redis[{i}].{field}"),
                message,
            };
            let name = bridge.name_or(i);
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return Err(invalid("name", "use A-Z a-z 0-9 _ - .".into()));
            }
            if !names.insert(name.clone()) {
                return Err(invalid("name", format!("`{name}` names an earlier bridge")));
            }
            let url = bridge.url_or(&self.redis);
            if let Err(err) = redis::Client::open(url) {
                return Err(invalid("url", format!("not a Redis URL: {err}")));
            }
            if bridge.channels.is_empty() && bridge.publish_rooms.is_empty() {
                return Err(invalid(
                    "channels",
                    "a bridge needs channels (Redis to rooms), publish_rooms (rooms to Redis), or both".into(),
                ));
            }
            if bridge.channels.iter().any(|c| c.is_empty()) {
                return Err(invalid("channels", "a channel name is empty".into()));
            }
            let template_ok = |template: &str, var: &str| {
                template.contains(var) && !template.replace(var, "").contains(['{', '}'])
            };
            if !template_ok(&bridge.room, "{channel}") {
                return Err(invalid(
                    "room",
                    format!(
                        "`{}` must contain `{{channel}}` and no other `{{…}}`",
                        bridge.room
                    ),
                ));
            }
            if !bridge.publish_rooms.is_empty() {
                if !template_ok(&bridge.publish_channel, "{room}") {
                    return Err(invalid(
                        "publish_channel",
                        format!(
                            "`{}` must contain `{{room}}` and no other `{{…}}`",
                            bridge.publish_channel
                        ),
                    ));
                }
                // A room's messages sent to a channel this broker also carries in would
                // come back into the room a second time.
                for rooms in &bridge.publish_rooms {
                    let out = bridge.publish_channel.replace("{room}", rooms);
                    let looping = self
                        .bridge
                        .redis
                        .iter()
                        .flat_map(|b| &b.channels)
                        .find(|c| crate::glob::matches(c, &out) || crate::glob::matches(&out, c));
                    if let Some(channel) = looping {
                        return Err(invalid(
                            "publish_channel",
                            format!("messages of `{rooms}` would go out on `{out}`, which the bridge's channel `{channel}` carries back in: choose a channel of its own, e.g. `out:{{room}}`"),
                        ));
                    }
                }
                if bridge.publish_queue == 0 {
                    return Err(invalid("publish_queue", "must be greater than zero".into()));
                }
            }
            if bridge.leader_lease < Duration::from_millis(300) {
                return Err(invalid("leader_lease", "must be at least 300ms".into()));
            }
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
        let w = &self.webhooks;
        if w.timeout.is_zero() {
            return Err(invalid(
                "webhooks.timeout".into(),
                "must be greater than zero".into(),
            ));
        }
        if w.backoff.is_empty() && w.max_retries > 0 {
            return Err(invalid(
                "webhooks.backoff".into(),
                "needs at least one delay when webhooks.max_retries > 0".into(),
            ));
        }
        if !(0.0..1.0).contains(&w.jitter) {
            return Err(invalid(
                "webhooks.jitter".into(),
                "must be at least 0 and below 1".into(),
            ));
        }
        if w.rate_limit_per_s == 0 {
            return Err(invalid(
                "webhooks.rate_limit_per_s".into(),
                "must be greater than zero".into(),
            ));
        }
        let policy = self.ssrf_policy();
        for (id, endpoint) in &w.endpoints {
            let key = |k: &str| format!("webhooks.endpoints.{id}.{k}");
            crate::webhooks::validate_endpoint_id(id)
                .map_err(|e| invalid(format!("webhooks.endpoints.{id}"), e.to_string()))?;
            crate::webhooks::ssrf::check_url(&endpoint.url, &policy)
                .map_err(|e| invalid(key("url"), e.to_string()))?;
            crate::webhooks::event::validate_event_types(&endpoint.events)
                .map_err(|e| invalid(key("events"), e.to_string()))?;
            if let Some(secret) = &endpoint.secret {
                crate::webhooks::normalize_secrets(secret)
                    .map_err(|e| invalid(key("secret"), e.to_string()))?;
            }
            if endpoint.rate_limit_per_s == Some(0) {
                return Err(invalid(
                    key("rate_limit_per_s"),
                    "must be greater than zero".into(),
                ));
            }
        }
        Ok(())
    }

    /// The SSRF guard's settings derived from `[webhooks]`.
    pub fn ssrf_policy(&self) -> crate::webhooks::ssrf::SsrfPolicy {
        crate::webhooks::ssrf::SsrfPolicy {
            allow_http: self.webhooks.mode == WebhookMode::Development,
            allow: self.webhooks.allow.clone(),
        }
    }

    /// The options that apply to `room`.
    pub fn room_policy(&self, room: &str) -> RoomPolicy {
        let namespace = room.split_once(':').map(|(ns, _)| ns);
        let ns = match namespace.and_then(|ns| self.namespaces.get(ns)) {
            Some(ns) => ns.clone(),
            // A task's room holds its events: the broker writes them, owners read them, and
            // late tabs need all of them.
            None if namespace == Some(crate::tasks::NAMESPACE) => NamespaceConfig {
                history_size: Some(self.tasks.history_size),
                history_ttl: Some(self.tasks.history_ttl),
                presence: false,
                client_publish: false,
                anonymous: false,
            },
            None => NamespaceConfig::default(),
        };
        RoomPolicy {
            history_size: ns.history_size.unwrap_or(self.history.size),
            history_max_bytes: self.history.max_bytes,
            history_ttl: ns.history_ttl.unwrap_or(self.history.ttl),
            dedup_size: self.history.dedup_size,
            dedup_max_bytes: self.history.dedup_max_bytes,
            presence: ns.presence,
            client_publish: ns.client_publish,
            anonymous: ns.anonymous,
        }
    }

    /// The parsed listen address.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        let bind = &self.server.bind;
        bind.parse().map_err(|e| {
            let port = bind
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u64>().ok());
            let message = match port {
                Some(port) if port > u64::from(u16::MAX) => {
                    format!("`{bind}`: port {port} is out of range (0-65535)")
                }
                _ => format!("`{bind}` is not an address:port, e.g. 127.0.0.1:8000 ({e})"),
            };
            ConfigError::Invalid {
                key: "server.bind".into(),
                message,
            }
        })
    }

    /// Whether at least one token verification key (or key set) is configured.
    pub fn auth_configured(&self) -> bool {
        !self.auth.hs256_secret.is_empty()
            || !self.auth.rsa_public_key_file.is_empty()
            || !self.auth.ec_public_key_file.is_empty()
            || !self.auth.jwks_url.is_empty()
    }
}

/// The text of a working config file: `config.example.toml` (every key, commented, with
/// its default) with a freshly generated `auth.hs256_secret` and API key, for
/// `switchboard genconfig`.
pub fn generate_config_text() -> String {
    // The example's note on what to fill in is about the example, not this file.
    let example: String = {
        let text = include_str!("../config.example.toml");
        let start = text.find("# As copied,").unwrap_or(text.len());
        let end = text[start..].find("#\n").map_or(start, |i| start + i + 2);
        format!("{}{}", &text[..start], &text[end..])
    };
    let example = example.as_str();
    let secret = random_token();
    let key = random_token();
    let text = set_key_line(example, "auth", "hs256_secret", &format!("\"{secret}\""));
    let text = set_key_line(&text, "api", "keys", &format!("[\"{key}\"]"));
    let header = format!(
        "# Generated by `switchboard genconfig` ({} {}): auth.hs256_secret and api.keys hold\n\
         # fresh random secrets, so keep this file private. Everything else is the default.\n\n",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION")
    );
    header + &text
}

/// 32 random bytes, URL-safe base64 (43 characters).
fn random_token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// `text` with the line `key = …` of table `[section]` replaced by `key = value`.
fn set_key_line(text: &str, section: &str, key: &str, value: &str) -> String {
    let mut table = String::new();
    let mut out = String::with_capacity(text.len() + value.len());
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = table_header(trimmed) {
            table = name.to_owned();
        }
        let is_key = table == section
            && trimmed
                .split_once('=')
                .is_some_and(|(k, _)| k.trim() == key);
        if is_key {
            out.push_str(&format!("{key} = {value}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The name of a `[table]` header line.
fn table_header(line: &str) -> Option<&str> {
    let name = line.strip_prefix('[')?.split(']').next()?;
    (!name.starts_with('[')).then(|| name.trim())
}

/// The 1-based line where `dotted_key` (e.g. `webhooks.endpoints.a.url`) is set in the
/// TOML `text`, or else where its table starts; `None` when neither is in the file.
pub fn line_of_key(text: &str, dotted_key: &str) -> Option<usize> {
    if let Some(line) = line_in_array_table(text, dotted_key) {
        return Some(line);
    }
    let parts: Vec<&str> = dotted_key.split('.').collect();
    let mut table_line = None;
    // The key may sit under any of its prefixes as a table: `[a.b] c = …` or `[a] b.c = …`.
    for split in (0..parts.len()).rev() {
        let (table_path, key_path) = parts.split_at(split);
        let table = table_path.join(".");
        let key = key_path.join(".");
        let mut current = String::new();
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if let Some(name) = table_header(trimmed) {
                current = name.to_owned();
                if current == table && !table.is_empty() && table_line.is_none() {
                    table_line = Some(n + 1);
                }
                continue;
            }
            if current != table || trimmed.starts_with('#') {
                continue;
            }
            let found = trimmed
                .split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key);
            if found {
                return Some(n + 1);
            }
        }
    }
    table_line
}

/// The line of a key in the `n`-th `[[table]]` (`endpoints[1].room`,
/// `bridge.redis[0].url`): the key's own line, or the table header's.
fn line_in_array_table(text: &str, key: &str) -> Option<usize> {
    let (table, rest) = key.split_once('[')?;
    let (index, field) = rest.split_once("].")?;
    let index: usize = index.parse().ok()?;
    let header = format!("[[{table}]]");
    let mut seen = 0;
    let mut inside = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            if inside.is_some() {
                break;
            }
            if trimmed.replace(' ', "") == header {
                if seen == index {
                    inside = Some(n + 1);
                }
                seen += 1;
            }
            continue;
        }
        let matches = trimmed
            .split_once('=')
            .is_some_and(|(k, _)| k.trim().trim_matches('"') == field);
        if inside.is_some() && matches {
            return Some(n + 1);
        }
    }
    inside
}

/// Parses the file text, naming key and line on error.
fn parse_file(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let line = inner
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(1);
        ConfigError::File {
            path: path.to_owned(),
            key: (key != ".").then_some(key),
            line,
            message: inner.message().to_owned(),
        }
    })
}

/// Sections that environment overrides may target.
const SECTIONS: [&str; 12] = [
    "api",
    "asap",
    "server",
    "auth",
    "heartbeat",
    "limits",
    "router",
    "history",
    "resume",
    "conformance",
    "webhooks",
    "tasks",
];

type Override = (String, String, String, toml::Value);

/// Turns `SWITCHBOARD_<SECTION>_<KEY>=value` into (var, section, key, value).
///
/// Values are read as TOML scalars or arrays when they parse as such (`100`, `true`,
/// `["a","b"]`), otherwise as strings (`30s`, `127.0.0.1:8000`).
fn env_overrides(env: &[(String, String)]) -> Result<Vec<Override>, ConfigError> {
    let mut out = BTreeMap::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        if !SECTIONS.contains(&section) {
            continue;
        }
        if key.is_empty() {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "missing key after the section name".into(),
            });
        }
        let value = parse_env_value(raw);
        out.insert(var.clone(), (section.to_owned(), key.to_owned(), value));
    }
    Ok(out
        .into_iter()
        .map(|(var, (s, k, v))| (var, s, k, v))
        .collect())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

/// Optional durations, as [`duration`].
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

/// Lists of durations, each as [`duration`]: `["1s", "2s"]`.
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            list.iter()
                .map(|d| humantime::format_duration(*d).to_string()),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                humantime::parse_duration(text).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "`{text}` is not a duration ({e}); write e.g. \"1s\", \"250ms\""
                    ))
                })
            })
            .collect()
    }
}

/// Durations as human strings: `"30s"`, `"2m"`, `"1h 30m"`, `"250ms"`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. \"30s\", \"2m\", \"250ms\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, Path::new("test.toml"), &[])
    }

    #[test]
    fn example_file_documents_the_defaults() {
        let text = include_str!("../config.example.toml");
        let parsed = parse_file(text, Path::new("config.example.toml")).unwrap();
        assert_eq!(parsed, Config::default());
        // Every key of every section appears in the example.
        let table = toml::Table::try_from(Config::default()).unwrap();
        let example: toml::Table = text.parse().unwrap();
        for (section, keys) in &table {
            if matches!(section.as_str(), "namespaces" | "endpoints" | "bridge") {
                // Lists and maps with no entries by default: commented examples, which
                // the_example_profiles_parse checks.
                continue;
            }
            let example_section = example
                .get(section)
                .and_then(|s| s.as_table())
                .unwrap_or_else(|| panic!("section [{section}] missing from example"));
            for key in keys.as_table().unwrap().keys() {
                if (section.as_str(), key.as_str()) == ("webhooks", "endpoints") {
                    continue; // a map with no entries by default; see webhook_endpoints_parse
                }
                assert!(
                    example_section.contains_key(key),
                    "{section}.{key} missing from config.example.toml"
                );
            }
        }
    }

    /// The commented `>>> profile` blocks of config.example.toml, uncommented.
    fn example_profiles() -> Vec<(String, String)> {
        let text = include_str!("../config.example.toml");
        let mut profiles = Vec::new();
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("# >>> profile: ") {
                current = Some((name.to_owned(), String::new()));
            } else if line == "# <<<" {
                profiles.extend(current.take());
            } else if let Some((_, body)) = &mut current {
                // The prose before the first table is not TOML.
                if body.is_empty() && !line.starts_with("# [") {
                    continue;
                }
                body.push_str(line.strip_prefix("# ").unwrap_or(""));
                body.push('\n');
            }
        }
        profiles
    }

    #[test]
    fn the_example_profiles_parse() {
        let profiles = example_profiles();
        let names: Vec<&str> = profiles.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["agent host", "SOVD diagnostics"]);
        for (name, body) in profiles {
            let text = format!("[auth]\nhs256_secret = \"0123456789abcdef\"\n{body}");
            let config = parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(config.endpoints.len(), 1, "{name}");
        }
    }

    #[test]
    fn bad_endpoints_and_bridges_name_their_key_and_line() {
        let text = "[auth]\nanonymous = true\n[[endpoints]]\npath = \"/a/{id}\"\nroom = \"a:{id}\"\n[[endpoints]]\npath = \"/b\"\nroom = \"b:{x}\"\nclose_code = 1000\n";
        match parse(text).unwrap_err() {
            ConfigError::File { key, line, .. } => {
                assert_eq!(key.as_deref(), Some("endpoints[1].close_code"));
                assert_eq!(line, 9);
            }
            other => panic!("{other}"),
        }
        let looping = "[auth]\nanonymous = true\n[[bridge.redis]]\nchannels = [\"chat:*\"]\npublish_rooms = [\"chat:*\"]\n";
        match parse(looping).unwrap_err() {
            ConfigError::File {
                key, line, message, ..
            } => {
                assert_eq!(key.as_deref(), Some("bridge.redis[0].publish_channel"));
                assert_eq!(line, 3);
                assert!(message.contains("back in"), "{message}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn webhook_endpoints_parse_and_bad_ones_name_their_key() {
        let ok = parse(
            "[auth]\nanonymous = true\n[webhooks]\nmode = \"development\"\nbackoff = [\"50ms\", \"1s\"]\nallow = [\"127.0.0.1/32\"]\n[webhooks.endpoints.orders]\nurl = \"http://127.0.0.1:9/hook\"\nevents = [\"room.message\"]\n",
        )
        .unwrap();
        assert_eq!(
            ok.webhooks.backoff,
            vec![Duration::from_millis(50), Duration::from_secs(1)]
        );
        let orders = &ok.webhooks.endpoints["orders"];
        assert_eq!(orders.rooms, vec!["*".to_owned()]);
        assert_eq!(orders.secret, None);
        let cases = [
            // https only in production (the default mode).
            ("[webhooks.endpoints.a]\nurl = \"http://example.com/\"\nevents = [\"room.message\"]\n", "webhooks.endpoints.a.url"),
            // Loopback without an allowlist entry.
            ("[webhooks]\nmode = \"development\"\n[webhooks.endpoints.a]\nurl = \"http://127.0.0.1/\"\nevents = [\"room.message\"]\n", "webhooks.endpoints.a.url"),
            ("[webhooks.endpoints.a]\nurl = \"https://example.com/\"\nevents = [\"room.mesage\"]\n", "webhooks.endpoints.a.events"),
            ("[webhooks.endpoints.a]\nurl = \"https://example.com/\"\nevents = [\"room.message\"]\nsecret = \"nope\"\n", "webhooks.endpoints.a.secret"),
            ("[webhooks]\njitter = 1.5\n", "webhooks.jitter"),
            ("[webhooks]\nrate_limit_per_s = 0\n", "webhooks.rate_limit_per_s"),
        ];
        for (text, key) in cases {
            let text = format!("[auth]\nanonymous = true\n{text}");
            match parse(&text) {
                Err(
                    ConfigError::Invalid { key: k, .. } | ConfigError::File { key: Some(k), .. },
                ) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected an error on {key}, got {other:?}"),
            }
        }
        match parse("[auth]\nanonymous = true\n[webhooks]\nbackoff = [\"1s\", \"soon\"]\n") {
            Err(ConfigError::File { key, line, .. }) => {
                assert_eq!((key.as_deref(), line), (Some("webhooks.backoff"), 4));
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn namespaces_resolve_over_history_defaults() {
        let c = parse(
            "[auth]\nanonymous = true\n[namespaces.conversation]\nhistory_size = 7\npresence = true\n\n[namespaces.feed]\nclient_publish = false\nhistory_ttl = \"1m\"\n",
        )
        .unwrap();
        let conv = c.room_policy("conversation:1");
        assert_eq!(
            (conv.history_size, conv.presence, conv.client_publish),
            (7, true, true)
        );
        assert_eq!(conv.history_ttl, Duration::from_secs(300));
        let feed = c.room_policy("feed:x");
        assert_eq!(feed.history_ttl, Duration::from_secs(60));
        assert!(!feed.client_publish && !feed.presence);
        let plain = c.room_policy("lobby");
        assert_eq!(plain.history_size, 100);
        // The commented example in config.example.toml parses as documented.
        let example: String = include_str!("../config.example.toml")
            .lines()
            .skip_while(|l| !l.starts_with("# [namespaces.conversation]"))
            .take_while(|l| !l.is_empty())
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let with_example = format!("[auth]\nanonymous = true\n{example}");
        let c = parse(&with_example).unwrap();
        assert!(c.room_policy("conversation:9").presence);
        let err =
            parse("[namespaces.x]\nhistory_size = 0\n[auth]\nanonymous = true\n").unwrap_err();
        assert!(
            err.to_string().contains("namespaces.x.history_size"),
            "{err}"
        );
    }

    #[test]
    fn validation_errors_name_the_key_and_its_line() {
        let text = "[auth]\nanonymous = true\n\n[limits]\nburst = 0\n";
        match parse(text) {
            Err(ConfigError::File { key, line, .. }) => {
                assert_eq!((key.as_deref(), line), (Some("limits.burst"), 5));
            }
            other => panic!("{other:?}"),
        }
        let err = parse("[server]\nbind = \"127.0.0.1:70000\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("line 2") && text.contains("port 70000 is out of range"),
            "{text}"
        );
        let text = "[auth]\nanonymous = true\n[webhooks.endpoints.a]\nurl = \"ftp://x\"\nevents = [\"room.message\"]\n";
        match parse(text) {
            Err(ConfigError::File { key, line, .. }) => {
                assert_eq!(
                    (key.as_deref(), line),
                    (Some("webhooks.endpoints.a.url"), 4)
                );
            }
            other => panic!("{other:?}"),
        }
        // A required key that is not in the file: its table's line.
        match parse("[auth]\nleeway = \"1s\"\n") {
            Err(ConfigError::File { key, line, .. }) => {
                assert_eq!((key.as_deref(), line), (Some("auth.hs256_secret"), 1));
            }
            other => panic!("{other:?}"),
        }
        // A bad value from the environment names the variable.
        let env = vec![("SWITCHBOARD_LIMITS_BURST".to_owned(), "0".to_owned())];
        let err = Config::from_toml_with_env("[auth]\nanonymous = true\n", Path::new("t"), &env)
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::Env { ref var, .. } if var == "SWITCHBOARD_LIMITS_BURST"),
            "{err}"
        );
    }

    #[test]
    fn generated_config_is_valid_and_secret() {
        let a = generate_config_text();
        let b = generate_config_text();
        let config = parse(&a).expect("a generated config passes validation");
        assert!(
            !a.contains("As copied"),
            "the example's fill-in note is left out"
        );
        assert_eq!(config.auth.hs256_secret.len(), 43);
        assert_eq!(config.api.keys.len(), 1);
        assert_ne!(config.auth.hs256_secret, config.api.keys[0]);
        assert_ne!(
            parse(&b).unwrap().auth.hs256_secret,
            config.auth.hs256_secret
        );
        // Everything but the two secrets is the default.
        let mut defaults = config.clone();
        defaults.auth.hs256_secret = String::new();
        defaults.api.keys.clear();
        assert_eq!(defaults, Config::default());
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let err = parse("[server]\nworkers = 2\n\n[heartbeat]\ninterval = \"soon\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("heartbeat.interval"), "{text}");
        assert!(text.contains("line 5"), "{text}");

        let err = parse("[limits]\nmax_frame_bytes = \"big\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("limits.max_frame_bytes") && text.contains("line 2"),
            "{text}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let err = parse("[server]\nbind = \"127.0.0.1:1\"\nbnid = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bnid") && text.contains("line 3"), "{text}");
        let err = parse("[nope]\n").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn env_overrides_apply_and_name_the_variable() {
        let env = vec![
            ("SWITCHBOARD_HEARTBEAT_INTERVAL".to_owned(), "5s".to_owned()),
            ("SWITCHBOARD_LIMITS_BURST".to_owned(), "7".to_owned()),
            (
                "SWITCHBOARD_AUTH_HS256_SECRET".to_owned(),
                "0123456789abcdef0123".to_owned(),
            ),
            ("SWITCHBOARD_CONFIG".to_owned(), "ignored.toml".to_owned()),
        ];
        let c = Config::from_toml_with_env("", Path::new("t.toml"), &env).unwrap();
        assert_eq!(c.heartbeat.interval, Duration::from_secs(5));
        assert_eq!(c.limits.burst, 7);
        let env = vec![("SWITCHBOARD_LIMITS_BURST".to_owned(), "lots".to_owned())];
        let err = Config::from_toml_with_env("", Path::new("t.toml"), &env).unwrap_err();
        assert!(
            err.to_string().contains("SWITCHBOARD_LIMITS_BURST"),
            "{err}"
        );
        let env = vec![("SWITCHBOARD_LIMITS_BRUST".to_owned(), "1".to_owned())];
        let err = Config::from_toml_with_env("", Path::new("t.toml"), &env).unwrap_err();
        assert!(
            err.to_string().contains("SWITCHBOARD_LIMITS_BRUST"),
            "{err}"
        );
    }

    #[test]
    fn secure_by_default_on_public_addresses() {
        let err = parse("[server]\nbind = \"0.0.0.0:8000\"\n").unwrap_err();
        assert!(err.to_string().contains("server.bind"), "{err}");
        let ok = parse(
            "[server]\nbind = \"0.0.0.0:8000\"\n[auth]\nhs256_secret = \"0123456789abcdef0123\"\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
        let mut dev = Config::dev();
        dev.server.bind = "0.0.0.0:8000".into();
        assert!(dev.validate().is_err());
    }

    #[test]
    fn algorithms_need_their_keys() {
        let err = parse("[auth]\nalgorithms = [\"RS256\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("auth.rsa_public_key_file"),
            "{err}"
        );
        let err = parse("[auth]\nalgorithms = [\"none\"]\n").unwrap_err();
        assert!(err.to_string().contains("auth.algorithms"), "{err}");
    }

    #[test]
    fn a_key_set_alone_is_a_key_source_and_is_checked() {
        let jwks = "[server]\nbind = \"0.0.0.0:8000\"\n[auth]\nalgorithms = [\"RS256\", \"ES256\"]\njwks_url = \"https://idp.example/jwks\"\n";
        let c = parse(jwks).unwrap();
        assert!(c.auth_configured());
        assert_eq!(c.auth.jwks_refresh, Duration::from_secs(600));
        assert_eq!(c.auth.jwks_min_refresh_interval, Duration::from_secs(30));
        // HS256 (the default list) still needs its secret: a key set has no shared secrets.
        let err = parse("[auth]\njwks_url = \"https://idp.example/jwks\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("auth.hs256_secret") && text.contains("RS256"),
            "{text}"
        );
        for (text, key) in [
            (
                "[auth]\nalgorithms = [\"RS256\"]\njwks_url = \"ftp://idp.example/jwks\"\n",
                "auth.jwks_url",
            ),
            (
                "[auth]\nalgorithms = [\"RS256\"]\njwks_url = \"idp.example/jwks\"\n",
                "auth.jwks_url",
            ),
            (
                "[auth]\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp.example/jwks\"\njwks_refresh = \"0s\"\n",
                "auth.jwks_refresh",
            ),
            (
                "[auth]\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp.example/jwks\"\njwks_min_refresh_interval = \"0s\"\n",
                "auth.jwks_min_refresh_interval",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    /// Fuzz-ish: mangled config files give errors, never panics.
    #[test]
    fn mangled_files_never_panic() {
        let text = include_str!("../config.example.toml");
        let bytes = text.as_bytes();
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..3_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let pos = (state % bytes.len() as u64) as usize;
            let mut mangled = bytes.to_vec();
            let replacement = b"=\"[]{}x0\n#."[(state >> 32) as usize % 11];
            mangled[pos] = replacement;
            let mangled = String::from_utf8_lossy(&mangled);
            if let Err(err) = parse(&mangled) {
                assert!(!err.to_string().is_empty());
            }
        }
    }
}
