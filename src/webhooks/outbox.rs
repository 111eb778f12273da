//! The durable webhook outbox: endpoints, pending deliveries, the dead-letter queue and the
//! attempt history, in one embedded SQLite database.
//!
//! An event that matches an endpoint counts as *accepted* only once [`Outbox::enqueue`] has
//! returned: the row is committed before the call returns, so a `kill -9` of the broker at any
//! later point cannot lose it, and a restart finds it again through [`Outbox::head`].
//!
//! # Durability
//!
//! The database runs in WAL mode (readers never block the writer, and a commit is one
//! sequential append to the log). [`Synchronous::Normal`] (what [`Outbox::open`] uses) is
//! enough for the process-crash guarantee above: a committed transaction is in the WAL file
//! in the OS page cache, which survives the process. It does *not* fsync on every commit, so
//! an OS crash or power loss may roll back the last few commits (the database stays
//! consistent). Deployments that need an accepted event to survive power loss open with
//! [`Synchronous::Full`], which fsyncs the WAL on every commit at the cost of one fsync per
//! enqueue. The broker's own room history is in memory, so `Normal` is the default.
//!
//! # Ordering
//!
//! Every delivery gets a per-endpoint `seq` (the order of acceptance, never reused, even after
//! deliveries are pruned). [`Outbox::head`] is an endpoint's oldest pending delivery, and the
//! `RetryQueue` only ever attempts the head, when its `next_attempt_at` has come. A later
//! event for an endpoint is therefore never attempted while an earlier one is still pending
//! (retrying or waiting); once the head is delivered or dead-lettered the next one becomes
//! the head.
//!
//! `head` does not lease: the caller (the single-writer `RetryQueue` actor) remembers which
//! delivery it has in flight and records its outcome before asking again.
//!
//! # Schema
//!
//! The schema is created or migrated on open and versioned with `PRAGMA user_version`; a
//! database written by a newer version of the broker is refused rather than misread.

use std::path::Path;
use std::str::FromStr;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::policy::Outcome;

/// Current schema version, stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 2;

/// Schema version 1: endpoints, deliveries and attempts.
///
/// `endpoints.next_seq` is the last `seq` handed out, so sequences stay monotonic even when
/// old deliveries are pruned. Deleting an endpoint cascades to its deliveries and attempts.
const SCHEMA_V1: &str = "
CREATE TABLE endpoints (
    id               TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    secret           TEXT NOT NULL,
    events           TEXT NOT NULL,
    rooms            TEXT NOT NULL,
    rate_limit_per_s INTEGER NOT NULL,
    enabled          INTEGER NOT NULL DEFAULT 1,
    disabled_reason  TEXT,
    failing_since    INTEGER,
    created_at       INTEGER NOT NULL,
    next_seq         INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    endpoint_id     TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    last_latency_ms INTEGER,
    delivered_at    INTEGER,
    UNIQUE (endpoint_id, seq)
) STRICT;

CREATE INDEX deliveries_state_endpoint_seq ON deliveries (state, endpoint_id, seq);

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    status      INTEGER,
    error       TEXT,
    latency_ms  INTEGER NOT NULL
) STRICT;

CREATE INDEX attempts_delivery ON attempts (delivery_id, id);
";

/// Schema version 2: endpoints remember whether the config file defines them, so one that
/// leaves the file can be told apart from one made through the API.
const SCHEMA_V2: &str = "
ALTER TABLE endpoints ADD COLUMN from_config INTEGER NOT NULL DEFAULT 0;
";

/// The disabled reason of a config-file endpoint whose table was removed from the file.
pub const REMOVED_FROM_CONFIG: &str = "removed from the config file";

const ENDPOINT_COLS: &str = "id, url, secret, events, rooms, rate_limit_per_s, enabled, \
     disabled_reason, failing_since, created_at, from_config";

const DELIVERY_COLS: &str = "id, endpoint_id, seq, event_type, payload, state, attempts, \
     next_attempt_at, created_at, last_status, last_error, last_latency_ms, delivered_at";

/// Everything that can go wrong in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database failed (I/O, constraint violation).
    #[error("outbox database error: {0}")]
    Sqlite(rusqlite::Error),
    /// The file is not a database, or its pages are damaged: what it holds can no longer
    /// be trusted to be all that was accepted.
    #[error("the outbox database is damaged: {0}")]
    Corrupt(String),
    /// No endpoint or delivery with that id.
    #[error("not found: {0}")]
    NotFound(String),
    /// The operation does not apply to the row's current state (e.g. replaying a delivery
    /// that is not in the dead-letter queue), or the schema is newer than this build.
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// A JSON column (endpoint `events`/`rooms`) could not be encoded or decoded.
    #[error("outbox JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<rusqlite::Error> for OutboxError {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as Code;
        match err.sqlite_error_code() {
            Some(Code::DatabaseCorrupt | Code::NotADatabase) => {
                OutboxError::Corrupt(err.to_string())
            }
            _ => OutboxError::Sqlite(err),
        }
    }
}

/// Result type of the outbox.
pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// A delivery id: `msg_` + a simple UUID. It is also the `webhook-id` header, stable across
/// retries, so receivers can use it as an idempotency key.
pub type DeliveryId = String;

/// How hard SQLite flushes on commit; see the module docs on durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Survives a process crash (`kill -9`); the last commits may be lost on power loss.
    #[default]
    Normal,
    /// fsync on every commit: an accepted event also survives power loss.
    Full,
}

/// A webhook endpoint as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `ep_` + a simple UUID.
    pub id: String,
    /// Where deliveries are POSTed (validated by the SSRF guard before it gets here).
    pub url: String,
    /// The `whsec_…` signing secret.
    pub secret: String,
    /// Event types this endpoint subscribes to.
    pub events: Vec<String>,
    /// Room glob patterns this endpoint subscribes to.
    pub rooms: Vec<String>,
    /// Maximum attempts per second towards this endpoint.
    pub rate_limit_per_s: u32,
    /// Disabled endpoints keep (and keep receiving) pending deliveries; the `RetryQueue`
    /// does not attempt them.
    pub enabled: bool,
    /// Why the endpoint was disabled (e.g. failing continuously), if it was.
    pub disabled_reason: Option<String>,
    /// Unix ms of the first failed attempt since the last success, for the auto-disable rule.
    pub failing_since: Option<i64>,
    /// Unix ms of registration.
    pub created_at: i64,
    /// Defined by the config file (`[webhooks.endpoints.<id>]`), not through the API.
    pub from_config: bool,
}

impl std::fmt::Debug for Endpoint {
    // Hand-written so that the secret never ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("rooms", &self.rooms)
            .field("rate_limit_per_s", &self.rate_limit_per_s)
            .field("enabled", &self.enabled)
            .field("disabled_reason", &self.disabled_reason)
            .field("failing_since", &self.failing_since)
            .field("created_at", &self.created_at)
            .field("from_config", &self.from_config)
            .finish()
    }
}

/// The fields of a new endpoint; the id and timestamps are assigned by the outbox. Also
/// what nodes share of an endpoint ([`super::shared::SharedEndpoint`]).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewEndpoint {
    /// Where deliveries are POSTed.
    pub url: String,
    /// The `whsec_…` signing secret (generated by the caller when the user gave none).
    pub secret: String,
    /// Event types to subscribe to.
    pub events: Vec<String>,
    /// Room glob patterns to subscribe to.
    pub rooms: Vec<String>,
    /// Maximum attempts per second.
    pub rate_limit_per_s: u32,
}

impl std::fmt::Debug for NewEndpoint {
    // Hand-written so that the secret never ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewEndpoint")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("rooms", &self.rooms)
            .field("rate_limit_per_s", &self.rate_limit_per_s)
            .finish()
    }
}

impl Endpoint {
    /// What defines the endpoint (for sharing it with other nodes).
    pub fn definition(&self) -> NewEndpoint {
        NewEndpoint {
            url: self.url.clone(),
            secret: self.secret.clone(),
            events: self.events.clone(),
            rooms: self.rooms.clone(),
            rate_limit_per_s: self.rate_limit_per_s,
        }
    }
}

/// A partial update of an endpoint (`PATCH /api/webhooks/{id}`); `None` leaves a field as is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPatch {
    /// New URL.
    pub url: Option<String>,
    /// New event subscriptions.
    pub events: Option<Vec<String>>,
    /// New room patterns.
    pub rooms: Option<Vec<String>>,
    /// New rate limit.
    pub rate_limit_per_s: Option<u32>,
    /// New signing secret(s), current first (space-separated during a rotation).
    pub secret: Option<String>,
    /// `Some(true)` re-enables (clearing the disabled reason and failure streak);
    /// `Some(false)` disables by hand.
    pub enabled: Option<bool>,
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// A 2xx was received.
    Delivered,
    /// Dead-lettered: retries exhausted or a non-retryable response. Lives in the DLQ.
    Failed,
}

impl DeliveryState {
    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

impl FromStr for DeliveryState {
    type Err = OutboxError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            other => Err(OutboxError::InvalidState(format!(
                "unknown delivery state {other:?}"
            ))),
        }
    }
}

/// One event to be delivered to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `msg_` + a simple UUID; also the `webhook-id` header.
    pub id: DeliveryId,
    /// The endpoint it goes to.
    pub endpoint_id: String,
    /// Per-endpoint order of acceptance.
    pub seq: i64,
    /// The event type (`room.message`, …).
    pub event_type: String,
    /// The exact JSON body to send; stored verbatim so every retry signs the same bytes.
    pub payload: String,
    /// Current state.
    pub state: DeliveryState,
    /// Attempts made so far (reset by a replay).
    pub attempts: u32,
    /// Unix ms before which the delivery must not be attempted.
    pub next_attempt_at: i64,
    /// Unix ms of acceptance.
    pub created_at: i64,
    /// HTTP status of the last attempt, if one was received.
    pub last_status: Option<u16>,
    /// Error of the last attempt (timeout, connection refused, non-2xx, …).
    pub last_error: Option<String>,
    /// Latency of the last attempt.
    pub last_latency_ms: Option<i64>,
    /// Unix ms of the successful attempt.
    pub delivered_at: Option<i64>,
}

/// One recorded attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The delivery attempted.
    pub delivery_id: DeliveryId,
    /// 1-based attempt number (restarts at 1 after a replay).
    pub attempt: u32,
    /// Unix ms when the request started (`now_ms - latency_ms` of the recording call).
    pub started_at: i64,
    /// HTTP status, if a response was received.
    pub status: Option<u16>,
    /// Error text for failed attempts.
    pub error: Option<String>,
    /// Time from request start to response or failure.
    pub latency_ms: i64,
}

/// A delivery with its attempt history, oldest attempt first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryHistory {
    /// The delivery.
    pub delivery: Delivery,
    /// Its attempts, oldest first.
    pub attempts: Vec<Attempt>,
}

/// One attempt's outcome to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptRecord<'a> {
    /// The delivery (must be pending).
    pub delivery_id: &'a str,
    /// How it ended: `Delivered` ends the endpoint's failure streak; `Retry` and `Dead`
    /// start one if none runs.
    pub outcome: &'a Outcome,
    /// For a `Retry`: when to try again (unix ms); the caller computes backoff, jitter and
    /// `Retry-After`. Not read for the other outcomes.
    pub next_attempt_at_ms: i64,
    /// How long it took.
    pub latency_ms: i64,
    /// When it finished (unix ms).
    pub now_ms: i64,
}

/// The SQLite-backed outbox. Synchronous and `&mut self` by design: it is owned by a single
/// writer (the `RetryQueue` actor), which serialises all access.
pub struct Outbox {
    conn: Connection,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `path` with [`Synchronous::Normal`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, Synchronous::Normal)
    }

    /// Opens (creating if needed) the outbox at `path` with the given flush policy.
    ///
    /// The whole file is checked first (`PRAGMA quick_check`): a damaged outbox is refused
    /// with [`OutboxError::Corrupt`] instead of being half read, which would silently drop
    /// the deliveries on its damaged pages.
    pub fn open_with(path: impl AsRef<Path>, sync: Synchronous) -> Result<Self> {
        let conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OutboxError::InvalidState(format!(
                "could not enable WAL journal mode (got {mode:?})"
            )));
        }
        check_integrity(&conn)?;
        Self::init(conn, sync)
    }

    /// Checks an outbox file without changing it: readable, undamaged, a schema this build
    /// knows. A file that does not exist yet passes when its directory exists.
    pub fn check_file(path: &Path) -> Result<()> {
        use rusqlite::OpenFlags;
        if !path.exists() {
            return Ok(());
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        check_integrity(&conn)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(OutboxError::InvalidState(format!(
                "outbox schema version {version} is newer than this build ({SCHEMA_VERSION})"
            )));
        }
        Ok(())
    }

    /// A private in-memory outbox, for tests. Nothing survives a drop.
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?, Synchronous::Normal)
    }

    fn init(mut conn: Connection, sync: Synchronous) -> Result<Self> {
        let sync = match sync {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        // Enforces endpoint → delivery → attempt cascades.
        conn.pragma_update(None, "foreign_keys", true)?;
        // Readers on other connections (if any are added later) wait instead of failing.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Outbox { conn })
    }

    // ---- endpoints ----

    /// Stores a new endpoint, enabled, with a fresh `ep_…` id.
    pub fn insert_endpoint(&mut self, new: NewEndpoint, now_ms: i64) -> Result<Endpoint> {
        let id = format!("ep_{}", uuid::Uuid::new_v4().simple());
        self.insert_endpoint_as(&id, new, now_ms)
    }

    /// Stores an endpoint another node created, under its id (enabled).
    pub fn insert_shared_endpoint(
        &mut self,
        id: &str,
        new: NewEndpoint,
        created_at: i64,
    ) -> Result<Endpoint> {
        self.insert_endpoint_as(id, new, created_at)
    }

    /// Creates the config-file endpoint `id` or, when it exists, updates its URL, events,
    /// rooms and rate limit (and its secret unless `keep_secret`), keeping its enabled state
    /// and deliveries; one disabled because it had left the file is enabled again. This is
    /// how endpoints defined in the config file come back at every start.
    pub fn upsert_endpoint(
        &mut self,
        id: &str,
        new: NewEndpoint,
        keep_secret: bool,
        now_ms: i64,
    ) -> Result<Endpoint> {
        let existing = get_endpoint(&self.conn, id).ok();
        if existing.is_none() {
            self.insert_endpoint_as(id, new.clone(), now_ms)?;
        }
        let returned = existing.is_some_and(|e| {
            !e.enabled && e.disabled_reason.as_deref() == Some(REMOVED_FROM_CONFIG)
        });
        let patch = EndpointPatch {
            url: Some(new.url),
            events: Some(new.events),
            rooms: Some(new.rooms),
            rate_limit_per_s: Some(new.rate_limit_per_s),
            secret: (!keep_secret).then_some(new.secret),
            enabled: returned.then_some(true),
        };
        self.conn.execute(
            "UPDATE endpoints SET from_config = 1 WHERE id = ?1",
            params![id],
        )?;
        self.update_endpoint(id, patch)
    }

    /// Disables the config-file endpoints whose ids are not in `keep` (their tables left
    /// the file), with the reason [`REMOVED_FROM_CONFIG`]. Their deliveries stay: DELETE
    /// the endpoint to drop them. Returns the ids disabled now.
    pub fn disable_removed_config_endpoints(&mut self, keep: &[&str]) -> Result<Vec<String>> {
        let mut disabled = Vec::new();
        for endpoint in self.list_endpoints()? {
            if endpoint.from_config && endpoint.enabled && !keep.contains(&endpoint.id.as_str()) {
                self.disable_endpoint(&endpoint.id, REMOVED_FROM_CONFIG)?;
                disabled.push(endpoint.id);
            }
        }
        Ok(disabled)
    }

    fn insert_endpoint_as(&mut self, id: &str, new: NewEndpoint, now_ms: i64) -> Result<Endpoint> {
        let endpoint = Endpoint {
            id: id.to_owned(),
            url: new.url,
            secret: new.secret,
            events: new.events,
            rooms: new.rooms,
            rate_limit_per_s: new.rate_limit_per_s,
            enabled: true,
            disabled_reason: None,
            failing_since: None,
            created_at: now_ms,
            from_config: false,
        };
        self.conn.execute(
            "INSERT INTO endpoints (id, url, secret, events, rooms, rate_limit_per_s, enabled, \
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
            params![
                endpoint.id,
                endpoint.url,
                endpoint.secret,
                serde_json::to_string(&endpoint.events)?,
                serde_json::to_string(&endpoint.rooms)?,
                endpoint.rate_limit_per_s,
                endpoint.created_at,
            ],
        )?;
        Ok(endpoint)
    }

    /// One endpoint, or [`OutboxError::NotFound`].
    pub fn get_endpoint(&self, id: &str) -> Result<Endpoint> {
        get_endpoint(&self.conn, id)
    }

    /// All endpoints, oldest first.
    pub fn list_endpoints(&self) -> Result<Vec<Endpoint>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ENDPOINT_COLS} FROM endpoints ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], endpoint_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Applies a partial update and returns the endpoint as it now is.
    pub fn update_endpoint(&mut self, id: &str, patch: EndpointPatch) -> Result<Endpoint> {
        let tx = self.conn.transaction()?;
        get_endpoint(&tx, id)?;
        if let Some(url) = patch.url {
            tx.execute(
                "UPDATE endpoints SET url = ?2 WHERE id = ?1",
                params![id, url],
            )?;
        }
        if let Some(events) = patch.events {
            tx.execute(
                "UPDATE endpoints SET events = ?2 WHERE id = ?1",
                params![id, serde_json::to_string(&events)?],
            )?;
        }
        if let Some(rooms) = patch.rooms {
            tx.execute(
                "UPDATE endpoints SET rooms = ?2 WHERE id = ?1",
                params![id, serde_json::to_string(&rooms)?],
            )?;
        }
        if let Some(secret) = patch.secret {
            tx.execute(
                "UPDATE endpoints SET secret = ?2 WHERE id = ?1",
                params![id, secret],
            )?;
        }
        if let Some(rate) = patch.rate_limit_per_s {
            tx.execute(
                "UPDATE endpoints SET rate_limit_per_s = ?2 WHERE id = ?1",
                params![id, rate],
            )?;
        }
        match patch.enabled {
            Some(true) => set_enabled(&tx, id, true, None)?,
            Some(false) => set_enabled(&tx, id, false, None)?,
            None => {}
        }
        let endpoint = get_endpoint(&tx, id)?;
        tx.commit()?;
        Ok(endpoint)
    }

    /// Deletes an endpoint with all its deliveries (pending ones and its DLQ entries, which
    /// could no longer be replayed) and their attempt history.
    pub fn delete_endpoint(&mut self, id: &str) -> Result<()> {
        let n = self
            .conn
            .execute("DELETE FROM endpoints WHERE id = ?1", params![id])?;
        if n == 0 {
            return Err(OutboxError::NotFound(format!("endpoint {id}")));
        }
        Ok(())
    }

    /// Disables an endpoint (e.g. failing continuously); its pending deliveries stay in the
    /// outbox and are not attempted until [`Outbox::enable_endpoint`].
    pub fn disable_endpoint(&mut self, id: &str, reason: &str) -> Result<()> {
        set_enabled(&self.conn, id, false, Some(reason))
    }

    /// Starts an endpoint's failure streak afresh at `since_ms`: the failures before it were
    /// separated from this one by a quiet period, not a run of failed attempts.
    pub fn restart_failure_streak(&mut self, id: &str, since_ms: i64) -> Result<()> {
        let changed = self.conn.execute(
            "UPDATE endpoints SET failing_since = ?2 WHERE id = ?1",
            params![id, since_ms],
        )?;
        if changed == 0 {
            return Err(OutboxError::NotFound(format!("endpoint {id}")));
        }
        Ok(())
    }

    /// Re-enables an endpoint and clears its disabled reason and failure streak.
    pub fn enable_endpoint(&mut self, id: &str) -> Result<()> {
        set_enabled(&self.conn, id, true, None)
    }

    // ---- deliveries ----

    /// Accepts an event for an endpoint: the delivery is committed (pending, due at `now_ms`)
    /// before this returns, so "accepted" means durable. `payload` is the exact body to send.
    ///
    /// Disabled endpoints still accept (the events wait for re-enabling); callers that do
    /// not want a backlog for disabled endpoints skip them when fanning out.
    pub fn enqueue(
        &mut self,
        endpoint_id: &str,
        event_type: &str,
        payload: &str,
        now_ms: i64,
    ) -> Result<DeliveryId> {
        let mut ids = self.enqueue_many(&[(endpoint_id, event_type, payload)], now_ms)?;
        Ok(ids.pop().expect("one delivery per item"))
    }

    /// [`Outbox::enqueue`] for several `(endpoint_id, event_type, payload)` items in one
    /// transaction (group commit: one WAL append and, under [`Synchronous::Full`], one fsync
    /// for all of them). All or nothing; each endpoint's items keep their order.
    pub fn enqueue_many(
        &mut self,
        items: &[(&str, &str, &str)],
        now_ms: i64,
    ) -> Result<Vec<DeliveryId>> {
        let tx = self.conn.transaction()?;
        let mut ids = Vec::with_capacity(items.len());
        {
            let mut next_seq = tx.prepare_cached(
                "UPDATE endpoints SET next_seq = next_seq + 1 WHERE id = ?1 RETURNING next_seq",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO deliveries (id, endpoint_id, seq, event_type, payload, state, \
                 attempts, next_attempt_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6)",
            )?;
            for &(endpoint_id, event_type, payload) in items {
                let seq: i64 = next_seq
                    .query_row(params![endpoint_id], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| OutboxError::NotFound(format!("endpoint {endpoint_id}")))?;
                let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
                insert.execute(params![id, endpoint_id, seq, event_type, payload, now_ms])?;
                ids.push(id);
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// An endpoint's oldest pending delivery, due or not, whether or not the endpoint is
    /// enabled: the one that must go out before any other of its deliveries.
    pub fn head(&self, endpoint_id: &str) -> Result<Option<Delivery>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLS} FROM deliveries
                 WHERE state = 'pending' AND endpoint_id = ?1 ORDER BY seq LIMIT 1"
            ))?
            .query_row(params![endpoint_id], delivery_from_row)
            .optional()?)
    }

    /// One delivery, or [`OutboxError::NotFound`].
    pub fn get_delivery(&self, id: &str) -> Result<Delivery> {
        get_delivery(&self.conn, id)
    }

    /// Records a 2xx: the delivery becomes `delivered` and the endpoint's failure streak ends.
    /// `now_ms` is when the attempt finished.
    pub fn record_success(
        &mut self,
        delivery_id: &str,
        status: u16,
        latency_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        self.record_one(AttemptRecord {
            delivery_id,
            outcome: &Outcome::Delivered { status },
            next_attempt_at_ms: 0,
            latency_ms,
            now_ms,
        })
    }

    /// Records a failed attempt that will be retried at `next_attempt_at_ms` (the caller
    /// computes backoff, jitter and `Retry-After`). Starts the endpoint's failure streak if
    /// none is running.
    pub fn record_retry(
        &mut self,
        delivery_id: &str,
        status: Option<u16>,
        error: &str,
        latency_ms: i64,
        next_attempt_at_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        self.record_one(AttemptRecord {
            delivery_id,
            outcome: &Outcome::Retry {
                status,
                error: error.to_owned(),
                retry_after: None,
            },
            next_attempt_at_ms,
            latency_ms,
            now_ms,
        })
    }

    /// Records a final failure: the delivery becomes `failed`, i.e. dead-lettered, and the
    /// endpoint's next pending delivery becomes its head.
    pub fn record_dead(
        &mut self,
        delivery_id: &str,
        status: Option<u16>,
        error: &str,
        latency_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        self.record_one(AttemptRecord {
            delivery_id,
            outcome: &Outcome::Dead {
                status,
                error: error.to_owned(),
            },
            next_attempt_at_ms: 0,
            latency_ms,
            now_ms,
        })
    }

    fn record_one(&mut self, record: AttemptRecord<'_>) -> Result<()> {
        self.record_outcomes(std::slice::from_ref(&record))?
            .pop()
            .expect("one result per record")
    }

    /// Records several attempts' outcomes in one transaction (group commit). Each record
    /// gets its own result: one whose delivery is gone or no longer pending is skipped with
    /// [`OutboxError::NotFound`] / [`OutboxError::InvalidState`] and the others are kept.
    /// The outer error is a database failure, and then nothing was recorded.
    pub fn record_outcomes(&mut self, records: &[AttemptRecord<'_>]) -> Result<Vec<Result<()>>> {
        let tx = self.conn.transaction()?;
        let mut results = Vec::with_capacity(records.len());
        for record in records {
            let d = match pending_delivery(&tx, record.delivery_id) {
                Ok(d) => d,
                Err(err @ (OutboxError::NotFound(_) | OutboxError::InvalidState(_))) => {
                    results.push(Err(err));
                    continue;
                }
                Err(err) => return Err(err),
            };
            apply_outcome(&tx, &d, record)?;
            results.push(Ok(()));
        }
        tx.commit()?;
        Ok(results)
    }

    /// The dead-letter queue, most recent events first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<Delivery>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {DELIVERY_COLS} FROM deliveries WHERE state = 'failed'
             ORDER BY created_at DESC, seq DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map(params![sql_limit(limit)], delivery_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Moves a dead-lettered delivery back to `pending`, with its attempt count reset and due
    /// at `now_ms`; its attempt history is kept. [`OutboxError::InvalidState`] if it is not
    /// in the DLQ.
    ///
    /// It keeps its original `seq`, so it becomes its endpoint's head and goes out *before*
    /// any later events still pending there. That reorders relative to events delivered
    /// while it sat in the DLQ, which is inherent to a manual replay and acceptable: the
    /// operator asked for this event again, and the `webhook-id` lets receivers dedupe.
    pub fn replay(&mut self, delivery_id: &str, now_ms: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        let d = get_delivery(&tx, delivery_id)?;
        if d.state != DeliveryState::Failed {
            return Err(OutboxError::InvalidState(format!(
                "delivery {delivery_id} is {}, not in the dead-letter queue",
                d.state.as_str()
            )));
        }
        tx.execute(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?2 \
             WHERE id = ?1",
            params![delivery_id, now_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// An endpoint's most recent deliveries (newest first), each with its attempts, for
    /// `GET /api/webhooks/{id}/deliveries`.
    pub fn deliveries_for(&self, endpoint_id: &str, limit: usize) -> Result<Vec<DeliveryHistory>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {DELIVERY_COLS} FROM deliveries WHERE endpoint_id = ?1
             ORDER BY seq DESC LIMIT ?2"
        ))?;
        let deliveries = stmt
            .query_map(params![endpoint_id, sql_limit(limit)], delivery_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut attempts_stmt = self.conn.prepare(
            "SELECT delivery_id, attempt, started_at, status, error, latency_ms FROM attempts
             WHERE delivery_id = ?1 ORDER BY id",
        )?;
        let mut out = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let attempts = attempts_stmt
                .query_map(params![delivery.id], |r| {
                    Ok(Attempt {
                        delivery_id: r.get(0)?,
                        attempt: r.get(1)?,
                        started_at: r.get(2)?,
                        status: r.get(3)?,
                        error: r.get(4)?,
                        latency_ms: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            out.push(DeliveryHistory { delivery, attempts });
        }
        Ok(out)
    }

    /// Pending deliveries across all endpoints (the queue-depth metric).
    pub fn pending_count(&self) -> Result<u64> {
        count(&self.conn, "state = 'pending'", None)
    }

    /// Dead-lettered deliveries (the DLQ-size metric).
    pub fn dlq_count(&self) -> Result<u64> {
        count(&self.conn, "state = 'failed'", None)
    }

    /// Pending deliveries of one endpoint (0 for an unknown endpoint).
    pub fn pending_count_for(&self, endpoint_id: &str) -> Result<u64> {
        count(
            &self.conn,
            "state = 'pending' AND endpoint_id = ?1",
            Some(endpoint_id),
        )
    }

    /// Deletes the pending deliveries of *disabled* endpoints accepted before `cutoff_ms`, so
    /// a paused endpoint nobody re-enables does not grow the outbox forever. Returns how
    /// many went, per endpoint.
    pub fn expire_disabled_backlog(&mut self, cutoff_ms: i64) -> Result<Vec<(String, u64)>> {
        let tx = self.conn.transaction()?;
        let expired: Vec<(String, u64)> = {
            let mut stmt = tx.prepare(
                "SELECT d.endpoint_id, COUNT(*) FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
                 WHERE d.state = 'pending' AND e.enabled = 0 AND d.created_at < ?1
                 GROUP BY d.endpoint_id ORDER BY d.endpoint_id",
            )?;
            let rows = stmt.query_map(params![cutoff_ms], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        tx.execute(
            "DELETE FROM deliveries WHERE state = 'pending' AND created_at < ?1
             AND endpoint_id IN (SELECT id FROM endpoints WHERE enabled = 0)",
            params![cutoff_ms],
        )?;
        tx.commit()?;
        Ok(expired)
    }

    /// Deletes delivered deliveries (and their attempts) that were delivered before
    /// `cutoff_ms`, so the outbox does not grow forever. Returns how many were removed.
    pub fn purge_delivered_before(&mut self, cutoff_ms: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM deliveries WHERE state = 'delivered' AND delivered_at < ?1",
            params![cutoff_ms],
        )?)
    }
}

/// `PRAGMA quick_check`: every page and index is readable and consistent.
fn check_integrity(conn: &Connection) -> Result<()> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    match problems.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        _ => Err(OutboxError::Corrupt(
            problems.into_iter().take(3).collect::<Vec<_>>().join("; "),
        )),
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(OutboxError::InvalidState(format!(
            "outbox schema version {version} is newer than this build ({SCHEMA_VERSION})"
        )));
    }
    if version < 1 {
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA_V1)?;
        tx.pragma_update(None, "user_version", 1)?;
        tx.commit()?;
    }
    if version < 2 {
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA_V2)?;
        tx.pragma_update(None, "user_version", 2)?;
        tx.commit()?;
    }
    // Future migrations: `if version < 3 { … user_version = 3 }`.
    Ok(())
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn count(conn: &Connection, filter: &str, endpoint_id: Option<&str>) -> Result<u64> {
    let sql = format!("SELECT COUNT(*) FROM deliveries WHERE {filter}");
    let n: i64 = match endpoint_id {
        Some(id) => conn.query_row(&sql, params![id], |r| r.get(0))?,
        None => conn.query_row(&sql, [], |r| r.get(0))?,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

fn json_column(row: &Row<'_>, idx: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn endpoint_from_row(row: &Row<'_>) -> rusqlite::Result<Endpoint> {
    Ok(Endpoint {
        id: row.get(0)?,
        url: row.get(1)?,
        secret: row.get(2)?,
        events: json_column(row, 3)?,
        rooms: json_column(row, 4)?,
        rate_limit_per_s: row.get(5)?,
        enabled: row.get(6)?,
        disabled_reason: row.get(7)?,
        failing_since: row.get(8)?,
        created_at: row.get(9)?,
        from_config: row.get(10)?,
    })
}

fn delivery_from_row(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let state: String = row.get(5)?;
    let state = state.parse::<DeliveryState>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Delivery {
        id: row.get(0)?,
        endpoint_id: row.get(1)?,
        seq: row.get(2)?,
        event_type: row.get(3)?,
        payload: row.get(4)?,
        state,
        attempts: row.get(6)?,
        next_attempt_at: row.get(7)?,
        created_at: row.get(8)?,
        last_status: row.get(9)?,
        last_error: row.get(10)?,
        last_latency_ms: row.get(11)?,
        delivered_at: row.get(12)?,
    })
}

fn get_endpoint(conn: &Connection, id: &str) -> Result<Endpoint> {
    conn.query_row(
        &format!("SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = ?1"),
        params![id],
        endpoint_from_row,
    )
    .optional()?
    .ok_or_else(|| OutboxError::NotFound(format!("endpoint {id}")))
}

fn get_delivery(conn: &Connection, id: &str) -> Result<Delivery> {
    conn.prepare_cached(&format!(
        "SELECT {DELIVERY_COLS} FROM deliveries WHERE id = ?1"
    ))?
    .query_row(params![id], delivery_from_row)
    .optional()?
    .ok_or_else(|| OutboxError::NotFound(format!("delivery {id}")))
}

/// Writes one outcome for the pending delivery `d` inside `tx`.
fn apply_outcome(tx: &Transaction<'_>, d: &Delivery, record: &AttemptRecord<'_>) -> Result<()> {
    let attempt = d.attempts + 1;
    let (id, latency_ms, now_ms) = (record.delivery_id, record.latency_ms, record.now_ms);
    let (status, error) = match record.outcome {
        Outcome::Delivered { status } => {
            tx.prepare_cached(
                "UPDATE deliveries SET state = 'delivered', attempts = ?2, last_status = ?3, \
                 last_error = NULL, last_latency_ms = ?4, delivered_at = ?5 WHERE id = ?1",
            )?
            .execute(params![id, attempt, status, latency_ms, now_ms])?;
            tx.prepare_cached("UPDATE endpoints SET failing_since = NULL WHERE id = ?1")?
                .execute(params![d.endpoint_id])?;
            (Some(*status), None)
        }
        Outcome::Retry { status, error, .. } => {
            tx.prepare_cached(
                "UPDATE deliveries SET attempts = ?2, next_attempt_at = ?3, last_status = ?4, \
                 last_error = ?5, last_latency_ms = ?6 WHERE id = ?1",
            )?
            .execute(params![
                id,
                attempt,
                record.next_attempt_at_ms,
                status,
                error,
                latency_ms
            ])?;
            mark_failing(tx, &d.endpoint_id, now_ms)?;
            (*status, Some(error.as_str()))
        }
        Outcome::Dead { status, error } => {
            tx.prepare_cached(
                "UPDATE deliveries SET state = 'failed', attempts = ?2, last_status = ?3, \
                 last_error = ?4, last_latency_ms = ?5 WHERE id = ?1",
            )?
            .execute(params![id, attempt, status, error, latency_ms])?;
            mark_failing(tx, &d.endpoint_id, now_ms)?;
            (*status, Some(error.as_str()))
        }
    };
    insert_attempt(tx, id, attempt, status, error, latency_ms, now_ms)
}

/// The delivery, which must be pending: outcomes are only recorded for in-flight attempts.
fn pending_delivery(tx: &Transaction<'_>, id: &str) -> Result<Delivery> {
    let d = get_delivery(tx, id)?;
    if d.state != DeliveryState::Pending {
        return Err(OutboxError::InvalidState(format!(
            "delivery {id} is {}, not pending",
            d.state.as_str()
        )));
    }
    Ok(d)
}

fn insert_attempt(
    tx: &Transaction<'_>,
    delivery_id: &str,
    attempt: u32,
    status: Option<u16>,
    error: Option<&str>,
    latency_ms: i64,
    now_ms: i64,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO attempts (delivery_id, attempt, started_at, status, error, latency_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        delivery_id,
        attempt,
        now_ms.saturating_sub(latency_ms),
        status,
        error,
        latency_ms
    ])?;
    Ok(())
}

fn mark_failing(tx: &Transaction<'_>, endpoint_id: &str, now_ms: i64) -> Result<()> {
    tx.execute(
        "UPDATE endpoints SET failing_since = COALESCE(failing_since, ?2) WHERE id = ?1",
        params![endpoint_id, now_ms],
    )?;
    Ok(())
}

fn set_enabled(conn: &Connection, id: &str, enabled: bool, reason: Option<&str>) -> Result<()> {
    let n = if enabled {
        conn.execute(
            "UPDATE endpoints SET enabled = 1, disabled_reason = NULL, failing_since = NULL \
             WHERE id = ?1",
            params![id],
        )?
    } else {
        conn.execute(
            "UPDATE endpoints SET enabled = 0, disabled_reason = ?2 WHERE id = ?1",
            params![id, reason],
        )?
    };
    if n == 0 {
        return Err(OutboxError::NotFound(format!("endpoint {id}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn new_endpoint(url: &str) -> NewEndpoint {
        NewEndpoint {
            url: url.to_string(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
            events: vec!["room.message".to_string()],
            rooms: vec!["conversation:*".to_string()],
            rate_limit_per_s: 10,
        }
    }

    /// An in-memory outbox with endpoints `a.example` and `b.example`.
    fn two_endpoints() -> (Outbox, Endpoint, Endpoint) {
        let mut ob = Outbox::in_memory().unwrap();
        let a = ob
            .insert_endpoint(new_endpoint("https://a.example"), 0)
            .unwrap();
        let b = ob
            .insert_endpoint(new_endpoint("https://b.example"), 0)
            .unwrap();
        (ob, a, b)
    }

    /// What the RetryQueue would send at `now_ms`: each enabled endpoint's head, if due,
    /// earliest first, at most `limit`.
    fn due_now(ob: &Outbox, now_ms: i64, limit: usize) -> Vec<Delivery> {
        let mut due: Vec<Delivery> = ob
            .list_endpoints()
            .unwrap()
            .iter()
            .filter(|e| e.enabled)
            .filter_map(|e| ob.head(&e.id).unwrap())
            .filter(|d| d.next_attempt_at <= now_ms)
            .collect();
        due.sort_by_key(|d| (d.next_attempt_at, d.endpoint_id.clone()));
        due.truncate(limit);
        due
    }

    fn ids(ds: &[Delivery]) -> Vec<String> {
        ds.iter().map(|d| d.id.clone()).collect()
    }

    /// A unique database file under the temp dir, removed (with its WAL files) on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new() -> Self {
            let name = format!(
                "switchboard-outbox-{}-{}.db",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            );
            TempDb(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// A file outbox with 50 pending 1 KB deliveries, closed (so the WAL is checkpointed
    /// into the file), then `damage` applied to the file's bytes.
    fn damaged_outbox(damage: impl FnOnce(&mut Vec<u8>)) -> TempDb {
        let db = TempDb::new();
        {
            let mut ob = Outbox::open(&db.0).unwrap();
            let ep = ob
                .insert_endpoint(new_endpoint("https://a.example"), 0)
                .unwrap();
            let body = "x".repeat(1000);
            for _ in 0..50 {
                ob.enqueue(&ep.id, "room.message", &body, 0).unwrap();
            }
        }
        let mut bytes = std::fs::read(&db.0).unwrap();
        damage(&mut bytes);
        std::fs::write(&db.0, bytes).unwrap();
        db
    }

    #[test]
    fn a_disabled_endpoints_old_backlog_expires_and_nothing_else_does() {
        let (mut ob, a, b) = two_endpoints();
        for at in [100, 200, 300] {
            ob.enqueue(&a.id, "room.message", "{}", at).unwrap();
            ob.enqueue(&b.id, "room.message", "{}", at).unwrap();
        }
        ob.disable_endpoint(&a.id, "paused").unwrap();
        // Only a's deliveries accepted before 250 go; b is enabled and keeps everything.
        assert_eq!(
            ob.expire_disabled_backlog(250).unwrap(),
            vec![(a.id.clone(), 2)]
        );
        assert_eq!(ob.pending_count_for(&a.id).unwrap(), 1);
        assert_eq!(ob.pending_count_for(&b.id).unwrap(), 3);
        assert!(ob.expire_disabled_backlog(250).unwrap().is_empty());
        // What is left is still in order.
        assert_eq!(ob.head(&a.id).unwrap().unwrap().created_at, 300);
    }

    #[test]
    fn a_damaged_file_is_refused_not_half_read() {
        // A page in the middle of the deliveries (pages are 4 KiB).
        let db = damaged_outbox(|b| b[4 * 4096..5 * 4096].fill(0x55));
        assert!(matches!(
            Outbox::check_file(&db.0),
            Err(OutboxError::Corrupt(_))
        ));
        assert!(matches!(Outbox::open(&db.0), Err(OutboxError::Corrupt(_))));
        // A ruined header: not a database at all.
        let db = damaged_outbox(|b| b[..100].fill(0x55));
        assert!(matches!(
            Outbox::check_file(&db.0),
            Err(OutboxError::Corrupt(_))
        ));
        assert!(matches!(Outbox::open(&db.0), Err(OutboxError::Corrupt(_))));
        // An intact file passes, and a missing one too (it will be created).
        let db = damaged_outbox(|_| {});
        Outbox::check_file(&db.0).unwrap();
        assert_eq!(Outbox::open(&db.0).unwrap().pending_count().unwrap(), 50);
        Outbox::check_file(&TempDb::new().0).unwrap();
    }

    #[test]
    fn endpoint_crud_and_patch() {
        let mut ob = Outbox::in_memory().unwrap();
        let ep = ob
            .insert_endpoint(new_endpoint("https://a.example/hook"), 1_000)
            .unwrap();
        assert!(ep.id.starts_with("ep_"));
        assert_eq!(ob.get_endpoint(&ep.id).unwrap(), ep);
        assert!(
            !format!("{ep:?}").contains("whsec_"),
            "Debug must redact the secret"
        );

        let patched = ob
            .update_endpoint(
                &ep.id,
                EndpointPatch {
                    url: Some("https://b.example/hook".into()),
                    rooms: Some(vec!["ops:*".into(), "conversation:1".into()]),
                    rate_limit_per_s: Some(3),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(patched.url, "https://b.example/hook");
        assert_eq!(patched.rooms, vec!["ops:*", "conversation:1"]);
        assert_eq!(patched.rate_limit_per_s, 3);
        assert_eq!(patched.events, ep.events);

        ob.disable_endpoint(&ep.id, "failing for 5 days").unwrap();
        let e = ob.get_endpoint(&ep.id).unwrap();
        assert!(!e.enabled);
        assert_eq!(e.disabled_reason.as_deref(), Some("failing for 5 days"));
        let e = ob
            .update_endpoint(
                &ep.id,
                EndpointPatch {
                    enabled: Some(true),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(e.enabled && e.disabled_reason.is_none());

        assert_eq!(ob.list_endpoints().unwrap().len(), 1);
        ob.delete_endpoint(&ep.id).unwrap();
        assert!(matches!(
            ob.get_endpoint(&ep.id),
            Err(OutboxError::NotFound(_))
        ));
        assert!(matches!(
            ob.delete_endpoint(&ep.id),
            Err(OutboxError::NotFound(_))
        ));
        assert!(matches!(
            ob.update_endpoint("ep_nope", EndpointPatch::default()),
            Err(OutboxError::NotFound(_))
        ));
    }

    #[test]
    fn enqueue_unknown_endpoint_is_not_found() {
        let mut ob = Outbox::in_memory().unwrap();
        assert!(matches!(
            ob.enqueue("ep_nope", "room.message", "{}", 0),
            Err(OutboxError::NotFound(_))
        ));
        assert_eq!(ob.pending_count().unwrap(), 0);
    }

    #[test]
    fn enqueue_many_is_all_or_nothing_and_keeps_each_endpoints_order() {
        let (mut ob, a, b) = two_endpoints();
        let ids = ob
            .enqueue_many(
                &[
                    (&a.id, "room.message", "1"),
                    (&b.id, "room.message", "1"),
                    (&a.id, "presence.join", "2"),
                ],
                10,
            )
            .unwrap();
        assert_eq!(ids.len(), 3);
        let seqs: Vec<i64> = ids
            .iter()
            .map(|id| ob.get_delivery(id).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![1, 1, 2]);
        assert_eq!(ob.head(&a.id).unwrap().unwrap().id, ids[0]);

        // One unknown endpoint fails the whole batch: nothing of it is stored.
        let err = ob
            .enqueue_many(
                &[
                    (&a.id, "room.message", "3"),
                    ("ep_gone", "room.message", "3"),
                ],
                20,
            )
            .unwrap_err();
        assert!(matches!(err, OutboxError::NotFound(_)), "{err}");
        assert_eq!(ob.pending_count().unwrap(), 3);
        // The failed batch did not use up a seq.
        let next = ob.enqueue(&a.id, "room.message", "4", 30).unwrap();
        assert_eq!(ob.get_delivery(&next).unwrap().seq, 3);
    }

    #[test]
    fn due_returns_only_the_head_per_endpoint_in_order() {
        let (mut ob, a, b) = two_endpoints();
        let a_ids: Vec<_> = (0..3)
            .map(|i| {
                ob.enqueue(&a.id, "room.message", &format!(r#"{{"a":{i}}}"#), 100 + i)
                    .unwrap()
            })
            .collect();
        let b_ids: Vec<_> = (0..2)
            .map(|i| {
                ob.enqueue(&b.id, "room.message", &format!(r#"{{"b":{i}}}"#), 100 + i)
                    .unwrap()
            })
            .collect();
        assert!(a_ids[0].starts_with("msg_"));
        assert_eq!(ob.pending_count().unwrap(), 5);
        assert_eq!(ob.pending_count_for(&a.id).unwrap(), 3);

        // Nothing is due before acceptance time.
        assert!(due_now(&ob, 99, 10).is_empty());

        let due = due_now(&ob, 1_000, 10);
        assert_eq!(due.len(), 2);
        let mut got = ids(&due);
        got.sort();
        let mut want = vec![a_ids[0].clone(), b_ids[0].clone()];
        want.sort();
        assert_eq!(got, want);
        let head_a = due.iter().find(|d| d.endpoint_id == a.id).unwrap();
        assert_eq!(head_a.seq, 1);
        assert_eq!(head_a.payload, r#"{"a":0}"#);
        assert_eq!(head_a.state, DeliveryState::Pending);

        // The limit caps the number of endpoints served.
        assert_eq!(due_now(&ob, 1_000, 1).len(), 1);

        // Success on a's head makes a's second event the head; b is unchanged.
        ob.record_success(&a_ids[0], 200, 12, 1_010).unwrap();
        let due = due_now(&ob, 1_020, 10);
        let mut got = ids(&due);
        got.sort();
        let mut want = vec![a_ids[1].clone(), b_ids[0].clone()];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(
            ob.get_delivery(&a_ids[0]).unwrap().delivered_at,
            Some(1_010)
        );

        // Recording an outcome twice is refused.
        assert!(matches!(
            ob.record_success(&a_ids[0], 200, 12, 1_011),
            Err(OutboxError::InvalidState(_))
        ));

        // Drain everything in order.
        for id in a_ids[1..].iter().chain(b_ids.iter()) {
            ob.record_success(id, 204, 5, 2_000).unwrap();
        }
        assert!(due_now(&ob, i64::MAX, 10).is_empty());
        assert_eq!(ob.pending_count().unwrap(), 0);
    }

    #[test]
    fn retry_schedule_is_respected_and_blocks_later_events() {
        let mut ob = Outbox::in_memory().unwrap();
        let ep = ob
            .insert_endpoint(new_endpoint("https://a.example"), 0)
            .unwrap();
        let first = ob.enqueue(&ep.id, "room.message", "{}", 1_000).unwrap();
        let second = ob.enqueue(&ep.id, "room.message", "{}", 1_001).unwrap();

        ob.record_retry(&first, Some(503), "HTTP 503", 40, 3_000, 1_040)
            .unwrap();
        // Neither the retrying head nor the later event goes out before the retry time.
        assert!(due_now(&ob, 2_999, 10).is_empty());
        let due = due_now(&ob, 3_000, 10);
        assert_eq!(ids(&due), vec![first.clone()]);
        let d = &due[0];
        assert_eq!(d.attempts, 1);
        assert_eq!(d.last_status, Some(503));
        assert_eq!(d.last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(d.next_attempt_at, 3_000);
        assert_eq!(ob.get_endpoint(&ep.id).unwrap().failing_since, Some(1_040));

        ob.record_retry(&first, None, "timeout", 10_000, 20_000, 13_000)
            .unwrap();
        // The failure streak keeps its start.
        assert_eq!(ob.get_endpoint(&ep.id).unwrap().failing_since, Some(1_040));
        ob.record_success(&first, 200, 30, 20_030).unwrap();
        assert_eq!(ob.get_endpoint(&ep.id).unwrap().failing_since, None);
        assert_eq!(ids(&due_now(&ob, 20_030, 10)), vec![second]);
    }

    #[test]
    fn disabled_endpoints_are_not_due() {
        let mut ob = Outbox::in_memory().unwrap();
        let ep = ob
            .insert_endpoint(new_endpoint("https://a.example"), 0)
            .unwrap();
        let id = ob.enqueue(&ep.id, "room.message", "{}", 0).unwrap();
        ob.disable_endpoint(&ep.id, "failing").unwrap();
        assert!(due_now(&ob, 10, 10).is_empty());
        assert_eq!(ob.pending_count_for(&ep.id).unwrap(), 1);
        ob.enable_endpoint(&ep.id).unwrap();
        assert_eq!(ids(&due_now(&ob, 10, 10)), vec![id]);
    }

    #[test]
    fn dead_letter_and_replay() {
        let mut ob = Outbox::in_memory().unwrap();
        let ep = ob
            .insert_endpoint(new_endpoint("https://a.example"), 0)
            .unwrap();
        let first = ob.enqueue(&ep.id, "room.message", r#"{"n":1}"#, 0).unwrap();
        let second = ob.enqueue(&ep.id, "room.message", r#"{"n":2}"#, 1).unwrap();

        assert!(matches!(
            ob.replay(&first, 5),
            Err(OutboxError::InvalidState(_))
        ));
        ob.record_dead(&first, Some(400), "HTTP 400", 20, 100)
            .unwrap();
        assert_eq!(ob.dlq_count().unwrap(), 1);
        let dlq = ob.dead_letters(10).unwrap();
        assert_eq!(ids(&dlq), vec![first.clone()]);
        assert_eq!(dlq[0].state, DeliveryState::Failed);
        assert_eq!(dlq[0].last_status, Some(400));
        // The dead head no longer blocks the endpoint.
        assert_eq!(ids(&due_now(&ob, 100, 10)), vec![second.clone()]);

        ob.replay(&first, 200).unwrap();
        assert_eq!(ob.dlq_count().unwrap(), 0);
        let d = ob.get_delivery(&first).unwrap();
        assert_eq!(
            (d.state, d.attempts, d.next_attempt_at),
            (DeliveryState::Pending, 0, 200)
        );
        // Original seq: the replayed event is the head again, ahead of the later one.
        assert_eq!(ids(&due_now(&ob, 200, 10)), vec![first.clone()]);
        ob.record_success(&first, 200, 7, 210).unwrap();
        assert_eq!(ids(&due_now(&ob, 210, 10)), vec![second]);

        assert!(matches!(
            ob.replay(&first, 300),
            Err(OutboxError::InvalidState(_))
        ));
        assert!(matches!(
            ob.replay("msg_nope", 300),
            Err(OutboxError::NotFound(_))
        ));
    }

    #[test]
    fn attempts_history_is_recorded() {
        let mut ob = Outbox::in_memory().unwrap();
        let ep = ob
            .insert_endpoint(new_endpoint("https://a.example"), 0)
            .unwrap();
        let id = ob.enqueue(&ep.id, "room.message", "{}", 0).unwrap();
        let later = ob.enqueue(&ep.id, "room.message", "{}", 1).unwrap();
        ob.record_retry(&id, Some(500), "HTTP 500", 30, 1_000, 130)
            .unwrap();
        ob.record_retry(&id, None, "connection refused", 2, 3_000, 1_002)
            .unwrap();
        ob.record_dead(&id, Some(502), "HTTP 502", 50, 3_050)
            .unwrap();
        ob.replay(&id, 4_000).unwrap();
        ob.record_success(&id, 200, 8, 4_008).unwrap();

        let hist = ob.deliveries_for(&ep.id, 10).unwrap();
        assert_eq!(hist.len(), 2);
        assert_eq!(hist[0].delivery.id, later, "newest first");
        assert!(hist[0].attempts.is_empty());
        let h = &hist[1];
        assert_eq!(h.delivery.id, id);
        assert_eq!(h.delivery.state, DeliveryState::Delivered);
        let summary: Vec<_> = h
            .attempts
            .iter()
            .map(|a| {
                (
                    a.attempt,
                    a.status,
                    a.error.as_deref(),
                    a.latency_ms,
                    a.started_at,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, Some(500), Some("HTTP 500"), 30, 100),
                (2, None, Some("connection refused"), 2, 1_000),
                (3, Some(502), Some("HTTP 502"), 50, 3_000),
                (1, Some(200), None, 8, 4_000),
            ]
        );
        assert_eq!(ob.deliveries_for(&ep.id, 1).unwrap().len(), 1);
    }

    #[test]
    fn delete_endpoint_removes_its_deliveries() {
        let (mut ob, a, b) = two_endpoints();
        let dead = ob.enqueue(&a.id, "room.message", "{}", 0).unwrap();
        ob.record_dead(&dead, Some(410), "HTTP 410", 1, 1).unwrap();
        for i in 0..3 {
            ob.enqueue(&a.id, "room.message", "{}", i).unwrap();
        }
        let kept = ob.enqueue(&b.id, "room.message", "{}", 0).unwrap();
        ob.delete_endpoint(&a.id).unwrap();
        assert_eq!(ob.pending_count_for(&a.id).unwrap(), 0);
        assert_eq!(ob.pending_count().unwrap(), 1);
        assert_eq!(ob.dlq_count().unwrap(), 0);
        assert!(ob.deliveries_for(&a.id, 10).unwrap().is_empty());
        assert_eq!(ids(&due_now(&ob, 10, 10)), vec![kept]);
    }

    #[test]
    fn purge_removes_only_old_delivered() {
        let mut ob = Outbox::in_memory().unwrap();
        let ep = ob
            .insert_endpoint(new_endpoint("https://a.example"), 0)
            .unwrap();
        let old = ob.enqueue(&ep.id, "room.message", "{}", 0).unwrap();
        ob.record_success(&old, 200, 1, 10).unwrap();
        let recent = ob.enqueue(&ep.id, "room.message", "{}", 20).unwrap();
        ob.record_success(&recent, 200, 1, 30).unwrap();
        ob.enqueue(&ep.id, "room.message", "{}", 40).unwrap();
        assert_eq!(ob.purge_delivered_before(20).unwrap(), 1);
        assert!(matches!(
            ob.get_delivery(&old),
            Err(OutboxError::NotFound(_))
        ));
        // Sequences keep growing after a purge.
        let next = ob.enqueue(&ep.id, "room.message", "{}", 50).unwrap();
        assert_eq!(ob.get_delivery(&next).unwrap().seq, 4);
    }

    #[test]
    fn config_endpoints_are_upserted_and_disabled_when_they_leave_the_file() {
        let mut ob = Outbox::in_memory().unwrap();
        let api = ob
            .insert_endpoint(new_endpoint("https://api.example"), 0)
            .unwrap();
        assert!(!api.from_config);
        let cfg = ob
            .upsert_endpoint("orders", new_endpoint("https://a.example"), false, 0)
            .unwrap();
        assert!(cfg.from_config && cfg.enabled);
        let pending = ob.enqueue("orders", "room.message", "{}", 1).unwrap();
        // Next start: the file changes the URL; no secret in the file keeps the stored one.
        let mut changed = new_endpoint("https://b.example");
        changed.secret = "whsec_other".into();
        let again = ob.upsert_endpoint("orders", changed, true, 5).unwrap();
        assert_eq!(again.url, "https://b.example");
        assert_eq!(again.secret, cfg.secret);
        assert_eq!(again.created_at, 0);
        // The table leaves the file: disabled with a reason, deliveries kept; API
        // endpoints are not touched.
        assert_eq!(
            ob.disable_removed_config_endpoints(&[]).unwrap(),
            vec!["orders".to_owned()]
        );
        let gone = ob.get_endpoint("orders").unwrap();
        assert!(!gone.enabled);
        assert_eq!(gone.disabled_reason.as_deref(), Some(REMOVED_FROM_CONFIG));
        assert_eq!(
            ob.get_delivery(&pending).unwrap().state,
            DeliveryState::Pending
        );
        assert!(ob.get_endpoint(&api.id).unwrap().enabled);
        assert!(ob.disable_removed_config_endpoints(&[]).unwrap().is_empty());
        // Back in the file: enabled again. A hand-disabled one would stay disabled.
        let back = ob
            .upsert_endpoint("orders", new_endpoint("https://b.example"), true, 9)
            .unwrap();
        assert!(back.enabled && back.disabled_reason.is_none());
        ob.disable_endpoint("orders", "paused by hand").unwrap();
        let still = ob
            .upsert_endpoint("orders", new_endpoint("https://b.example"), true, 9)
            .unwrap();
        assert!(!still.enabled);
    }

    #[test]
    fn outcomes_are_recorded_together_and_a_stale_one_is_skipped_alone() {
        let (mut ob, a, b) = two_endpoints();
        let da = ob.enqueue(&a.id, "room.message", "{}", 1).unwrap();
        let db = ob.enqueue(&b.id, "room.message", "{}", 1).unwrap();
        let delivered = ob.enqueue(&b.id, "room.message", "{}", 1).unwrap();
        ob.record_success(&delivered, 200, 1, 2).unwrap();
        let (ok_204, ok_200) = (
            Outcome::Delivered { status: 204 },
            Outcome::Delivered { status: 200 },
        );
        let retry = Outcome::Retry {
            status: Some(503),
            error: "HTTP 503".into(),
            retry_after: None,
        };
        let record = |delivery_id, outcome, next_attempt_at_ms| AttemptRecord {
            delivery_id,
            outcome,
            next_attempt_at_ms,
            latency_ms: 3,
            now_ms: 10,
        };
        let results = ob
            .record_outcomes(&[
                record(&da, &ok_204, 0),
                record(&delivered, &ok_200, 0),
                record(&db, &retry, 500),
            ])
            .unwrap();
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(matches!(results[1], Err(OutboxError::InvalidState(_))));
        assert_eq!(
            ob.get_delivery(&da).unwrap().state,
            DeliveryState::Delivered
        );
        let retried = ob.get_delivery(&db).unwrap();
        assert_eq!((retried.attempts, retried.next_attempt_at), (1, 500));
        assert_eq!(ob.get_endpoint(&b.id).unwrap().failing_since, Some(10));
        assert_eq!(ob.get_endpoint(&a.id).unwrap().failing_since, None);
    }

    #[test]
    fn a_version_1_outbox_is_migrated() {
        let db = TempDb::new();
        {
            let conn = Connection::open(&db.0).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO endpoints (id, url, secret, events, rooms, rate_limit_per_s, created_at) \
                 VALUES ('ep_old', 'https://a.example', 's', '[]', '[\"*\"]', 10, 0)",
                [],
            )
            .unwrap();
        }
        let ob = Outbox::open(&db.0).unwrap();
        let old = ob.get_endpoint("ep_old").unwrap();
        assert!(!old.from_config && old.enabled);
        let version: i64 = ob
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn pending_deliveries_survive_drop_without_shutdown() {
        let db = TempDb::new();
        let (ep_id, ids_before) = {
            let mut ob = Outbox::open(&db.0).unwrap();
            let ep = ob
                .insert_endpoint(new_endpoint("https://a.example"), 0)
                .unwrap();
            let ids: Vec<_> = (0..3)
                .map(|i| ob.enqueue(&ep.id, "room.message", "{}", i).unwrap())
                .collect();
            ob.record_retry(&ids[0], Some(503), "HTTP 503", 5, 500, 10)
                .unwrap();
            // Simulate a crash: no close, no checkpoint, no destructor.
            std::mem::forget(ob);
            (ep.id, ids)
        };
        // A second, independent connection sees everything that enqueue returned for.
        let mut ob = Outbox::open_with(&db.0, Synchronous::Full).unwrap();
        assert_eq!(ob.pending_count_for(&ep_id).unwrap(), 3);
        assert!(due_now(&ob, 499, 10).is_empty());
        let due = due_now(&ob, 500, 10);
        assert_eq!(ids(&due), vec![ids_before[0].clone()]);
        assert_eq!(due[0].attempts, 1);
        ob.record_success(&ids_before[0], 200, 3, 510).unwrap();
        assert_eq!(ids(&due_now(&ob, 510, 10)), vec![ids_before[1].clone()]);
        // Sequences continue after reopen.
        let id = ob.enqueue(&ep_id, "room.message", "{}", 600).unwrap();
        assert_eq!(ob.get_delivery(&id).unwrap().seq, 4);
        drop(ob);
        // Reopening an up-to-date schema is a no-op.
        let ob = Outbox::open(&db.0).unwrap();
        assert_eq!(ob.pending_count().unwrap(), 3);
    }

    #[test]
    fn newer_schema_is_refused() {
        let db = TempDb::new();
        drop(Outbox::open(&db.0).unwrap());
        {
            let conn = Connection::open(&db.0).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        assert!(matches!(
            Outbox::open(&db.0),
            Err(OutboxError::InvalidState(_))
        ));
    }
}
