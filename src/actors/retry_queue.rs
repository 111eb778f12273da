//! RetryQueue actor: the single owner of the webhook outbox.
//!
//! Every webhook event passes through here once: it is committed to the SQLite outbox for
//! each matching endpoint before [`Emit`] answers, which is what makes a publish's
//! acknowledgement mean "will be delivered". The queue then hands each endpoint's oldest
//! pending delivery to that endpoint's [`WebhookTarget`] (one attempt in flight per
//! endpoint, so deliveries arrive in event order), records each outcome, schedules retries
//! with backoff, dead-letters what cannot be delivered, and disables endpoints that have
//! failed for too long.
//!
//! It runs on its own arbiter because SQLite calls block; the targets run on another, so a
//! slow commit never stalls an HTTP attempt and vice versa. On start it picks up whatever
//! the outbox holds, which is how deliveries pending at a crash go out after the restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::webhook_target::{Attempt, Reconfigure, StopTarget, TargetSettings, WebhookTarget};
use crate::config::{Config, ConfigError, DuplicateUrls, OnCorruptOutbox, WebhooksConfig};
use crate::metrics::Metrics;
use crate::webhooks::event::{self, WebhookEvent};
use crate::webhooks::filter::{subscribed, EndpointFilter, Filters};
use crate::webhooks::outbox::{
    AttemptRecord, Delivery, DeliveryHistory, Endpoint, EndpointPatch, NewEndpoint, Outbox,
    OutboxError, Outcome,
};
use crate::webhooks::policy::{RetryPolicy, Verdict};
use crate::webhooks::signing::WebhookSecret;
use crate::webhooks::{normalize_secrets, ssrf, OutboxHealth, WebhookError};

/// How often delivered deliveries older than `webhooks.retention` are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// The first wait after a failed outbox operation; it doubles with each failure in a row.
const STORAGE_RETRY_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between tries while the outbox keeps failing.
const STORAGE_RETRY_MAX: Duration = Duration::from_secs(30);

/// The RetryQueue actor.
pub struct RetryQueue {
    outbox: Outbox,
    targets: HashMap<String, TargetState>,
    filters: Filters,
    policy: RetryPolicy,
    settings: Arc<TargetSettings>,
    config: WebhooksConfig,
    delivery_arbiter: ArbiterHandle,
    metrics: Arc<Metrics>,
    pending: i64,
    dead: i64,
    draining: bool,
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// Events received since the last commit; see [`Emit`].
    batch: Vec<Emit>,
    /// Attempt outcomes received since the last commit.
    done_batch: Vec<AttemptDone>,
    /// Outcomes the outbox failed to record. Their endpoints stay blocked (the attempt
    /// counts as in flight) until they are recorded: the receiver has answered, so sending
    /// the delivery again would only repeat it, once per retry, for as long as the disk is
    /// failing.
    unrecorded: Vec<AttemptDone>,
    /// The timer that tries to record `unrecorded` again.
    record_retry: Option<SpawnHandle>,
    /// Outbox operations failed in a row (0 while it works).
    storage_failures: u32,
    health: OutboxHealth,
}

/// An attempt's outcome with the retry schedule applied.
enum Decision {
    Delivered {
        status: u16,
    },
    Retry {
        status: Option<u16>,
        error: String,
        at: i64,
    },
    Dead {
        status: Option<u16>,
        error: String,
    },
}

impl Decision {
    fn outcome(&self) -> Outcome<'_> {
        match self {
            Decision::Delivered { status } => Outcome::Delivered { status: *status },
            Decision::Retry { status, error, at } => Outcome::Retry {
                status: *status,
                error,
                next_attempt_at_ms: *at,
            },
            Decision::Dead { status, error } => Outcome::Dead {
                status: *status,
                error,
            },
        }
    }
}

/// Who waits for an event's commit.
type EmitReply = oneshot::Sender<Result<usize, WebhookError>>;

/// One endpoint as the queue tracks it.
struct TargetState {
    endpoint: Endpoint,
    addr: Addr<WebhookTarget>,
    /// The delivery being attempted, if any: nothing else of this endpoint goes out until
    /// its outcome is recorded.
    in_flight: Option<String>,
    /// A wake-up for the head's next attempt.
    timer: Option<SpawnHandle>,
    /// When its last attempt failed (since this process started).
    last_failure_at: Option<i64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn filter_of(endpoint: &Endpoint) -> EndpointFilter {
    EndpointFilter {
        endpoint_id: endpoint.id.clone(),
        events: endpoint.events.clone(),
        rooms: endpoint.rooms.clone(),
    }
}

/// Opens the outbox `[webhooks] outbox_path` names, creates or updates the endpoints the
/// file defines, and publishes their filters (before any room can raise an event). Errors
/// name the config key, or the file and how to recover it.
pub fn open_outbox(config: &Config, filters: &Filters) -> Result<Outbox, ConfigError> {
    let w = &config.webhooks;
    let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
    let mut outbox = if w.outbox_path.is_empty() {
        Outbox::in_memory().map_err(|e| invalid("webhooks.outbox_path".into(), e.to_string()))?
    } else {
        open_file_outbox(config)?
    };
    for (id, endpoint) in &w.endpoints {
        let key = format!("webhooks.endpoints.{id}");
        let keep_secret = endpoint.secret.is_none();
        let secret = match &endpoint.secret {
            Some(secret) => {
                normalize_secrets(secret).map_err(|e| invalid(key.clone(), e.to_string()))?
            }
            None => WebhookSecret::generate().expose_secret().to_owned(),
        };
        let new = NewEndpoint {
            url: endpoint.url.clone(),
            secret,
            events: endpoint.events.clone(),
            rooms: endpoint.rooms.clone(),
            rate_limit_per_s: endpoint.rate_limit_per_s.unwrap_or(w.rate_limit_per_s),
        };
        outbox
            .upsert_endpoint(id, new, keep_secret, now_ms())
            .map_err(|e| invalid(key, e.to_string()))?;
    }
    let keep: Vec<&str> = w.endpoints.keys().map(String::as_str).collect();
    let removed = outbox
        .disable_removed_config_endpoints(&keep)
        .map_err(|e| invalid("webhooks.outbox_path".into(), e.to_string()))?;
    for id in removed {
        let pending = outbox.pending_count_for(&id).unwrap_or(0);
        log::warn!("webhooks: endpoint {id} was removed from the config file: disabled, {pending} pending deliveries kept (DELETE /api/webhooks/{id} drops them)");
    }
    let endpoints = outbox
        .list_endpoints()
        .map_err(|e| invalid("webhooks.outbox_path".into(), e.to_string()))?;
    if w.outbox_path.is_empty() {
        log::warn!("webhooks: the outbox is in memory (webhooks.outbox_path = \"\"): pending deliveries do not survive a restart");
    } else {
        log::info!(
            "webhooks: outbox {} ({} endpoints)",
            w.outbox_path,
            endpoints.len()
        );
    }
    filters.publish(endpoints.iter().map(filter_of).collect());
    Ok(outbox)
}

/// Opens the file outbox, applying `webhooks.on_corrupt_outbox` to a damaged one.
fn open_file_outbox(config: &Config) -> Result<Outbox, ConfigError> {
    let w = &config.webhooks;
    let path = Path::new(&w.outbox_path);
    let failed = |message: String| ConfigError::Outbox {
        path: path.to_owned(),
        message,
    };
    let detail = match Outbox::open_with(path, w.synchronous) {
        Ok(outbox) => return Ok(outbox),
        Err(OutboxError::Corrupt(detail)) => detail,
        Err(err) => return Err(failed(format!("cannot be opened: {err}"))),
    };
    if w.on_corrupt_outbox == OnCorruptOutbox::Refuse {
        return Err(failed(format!(
            "is damaged ({detail}). Not starting: the pending deliveries it holds would be \
             lost. Recover what is readable with `sqlite3 {file} .recover | sqlite3 \
             {file}.recovered` and point webhooks.outbox_path at the recovered file, or set \
             webhooks.on_corrupt_outbox = \"move_aside\" to keep the damaged file aside \
             and start with an empty outbox.",
            file = path.display()
        )));
    }
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    // SQLite's companions move with it, so the fresh outbox does not pick up the old log.
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(|e| {
                failed(format!(
                    "is damaged ({detail}) and could not be moved to {}: {e}",
                    to.display()
                ))
            })?;
        }
    }
    log::error!(
        "webhooks: the outbox {} was damaged ({detail}); moved it to {} and started with an \
         EMPTY outbox: the deliveries that were pending in it will not be sent (recover them \
         from the moved file), and endpoints made through the API must be registered again",
        path.display(),
        aside.display()
    );
    Outbox::open_with(path, w.synchronous)
        .map_err(|e| failed(format!("a fresh outbox cannot be created: {e}")))
}

/// Checks, without changing anything, that `serve` will be able to open the outbox that
/// `webhooks.outbox_path` names: an undamaged file it can write, or a directory in which
/// it can create one. For `switchboard check-config`.
pub fn check_outbox(config: &Config) -> Result<(), ConfigError> {
    let w = &config.webhooks;
    if w.outbox_path.is_empty() {
        return Ok(());
    }
    let path = Path::new(&w.outbox_path);
    let failed = |message: String| ConfigError::Outbox {
        path: path.to_owned(),
        message,
    };
    if path.is_dir() {
        return Err(failed("is a directory, not a file".into()));
    }
    if path.exists() {
        Outbox::check_file(path).map_err(|e| failed(e.to_string()))?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| failed(format!("cannot be opened for writing: {e}")))?;
        return Ok(());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(failed(format!(
            "cannot be created: the directory {} does not exist",
            dir.display()
        )));
    }
    // The only way to know a file can be created there is to create one.
    let probe = dir.join(format!(".switchboard-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| failed(format!("cannot be created in {}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

impl RetryQueue {
    /// A queue over `outbox` that publishes endpoint filters to `filters` and starts
    /// targets on `delivery_arbiter`.
    pub fn new(
        outbox: Outbox,
        config: &Config,
        filters: Filters,
        metrics: Arc<Metrics>,
        delivery_arbiter: ArbiterHandle,
        health: OutboxHealth,
    ) -> RetryQueue {
        let w = &config.webhooks;
        let settings = TargetSettings {
            timeout: w.timeout,
            ssrf: config.ssrf_policy(),
            body_hmac_header: (!w.body_hmac_header.is_empty()).then(|| w.body_hmac_header.clone()),
            max_retry_after: w.max_retry_after,
        };
        RetryQueue {
            outbox,
            targets: HashMap::new(),
            filters,
            policy: RetryPolicy::from_config(w),
            settings: Arc::new(settings),
            config: w.clone(),
            delivery_arbiter,
            metrics,
            pending: 0,
            dead: 0,
            draining: false,
            drain_waiters: Vec::new(),
            batch: Vec::new(),
            done_batch: Vec::new(),
            unrecorded: Vec::new(),
            record_retry: None,
            storage_failures: 0,
            health,
        }
    }

    /// Notes a failed outbox operation (log, metric, `/readyz`); returns how long to wait
    /// before trying again, doubling with each failure in a row.
    fn storage_failed(&mut self, what: &str, err: &dyn std::fmt::Display) -> Duration {
        self.storage_failures = self.storage_failures.saturating_add(1);
        self.metrics.webhook_outbox_errors.inc();
        self.metrics.webhook_outbox_healthy.set(0);
        self.health.set_failing(format!("{what}: {err}"));
        let doublings = self.storage_failures.saturating_sub(1).min(16);
        let wait = (STORAGE_RETRY_FIRST * (1u32 << doublings)).min(STORAGE_RETRY_MAX);
        log::error!(
            "webhooks: outbox failure #{} in a row, {what}: {err}; next try in {wait:?}",
            self.storage_failures
        );
        wait
    }

    /// Notes a successful outbox write.
    fn storage_ok(&mut self) {
        if self.storage_failures > 0 {
            log::info!(
                "webhooks: the outbox works again after {} failure(s)",
                self.storage_failures
            );
            self.storage_failures = 0;
        }
        self.metrics.webhook_outbox_healthy.set(1);
        self.health.set_ok();
    }

    fn publish_filters(&self) {
        self.filters.publish(
            self.targets
                .values()
                .map(|t| filter_of(&t.endpoint))
                .collect(),
        );
    }

    fn update_gauges(&self) {
        self.metrics.webhook_queue_depth.set(self.pending);
        self.metrics.webhook_dlq_size.set(self.dead);
    }

    fn recount(&mut self) {
        match (self.outbox.pending_count(), self.outbox.dlq_count()) {
            (Ok(pending), Ok(dead)) => {
                self.pending = i64::try_from(pending).unwrap_or(i64::MAX);
                self.dead = i64::try_from(dead).unwrap_or(i64::MAX);
            }
            (Err(err), _) | (_, Err(err)) => {
                // Keep the last known figures rather than report an empty queue.
                self.storage_failed("counting deliveries", &err);
            }
        }
        self.update_gauges();
    }

    fn start_target(&mut self, endpoint: Endpoint, ctx: &mut Context<Self>) {
        let queue = ctx.address();
        let settings = self.settings.clone();
        let for_target = endpoint.clone();
        let addr = WebhookTarget::start_in_arbiter(&self.delivery_arbiter, move |_| {
            WebhookTarget::new(&for_target, settings, queue)
        });
        self.targets.insert(
            endpoint.id.clone(),
            TargetState {
                endpoint,
                addr,
                in_flight: None,
                timer: None,
                last_failure_at: None,
            },
        );
    }

    /// Sends `endpoint_id`'s head delivery to its target if it is due, or sets a timer for
    /// when it will be. Does nothing while an attempt is in flight, the endpoint is
    /// disabled, or the queue is draining for shutdown.
    fn pump(&mut self, endpoint_id: &str, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        let Some(target) = self.targets.get_mut(endpoint_id) else {
            return;
        };
        if !target.endpoint.enabled || target.in_flight.is_some() {
            return;
        }
        if let Some(timer) = target.timer.take() {
            ctx.cancel_future(timer);
        }
        let head = match self.outbox.head(endpoint_id) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(err) => {
                let wait =
                    self.storage_failed(&format!("reading {endpoint_id}'s next delivery"), &err);
                if let Some(target) = self.targets.get_mut(endpoint_id) {
                    Self::wake_later(target, endpoint_id, wait, ctx);
                }
                return;
            }
        };
        let Some(target) = self.targets.get_mut(endpoint_id) else {
            return;
        };
        let wait = head.next_attempt_at - now_ms();
        if wait <= 0 {
            target.in_flight = Some(head.id.clone());
            target.addr.do_send(Attempt(head));
        } else {
            let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
            Self::wake_later(target, endpoint_id, wait, ctx);
        }
    }

    fn wake_later(
        target: &mut TargetState,
        endpoint_id: &str,
        wait: Duration,
        ctx: &mut Context<Self>,
    ) {
        let id = endpoint_id.to_owned();
        target.timer = Some(ctx.run_later(wait, move |act, ctx| {
            if let Some(t) = act.targets.get_mut(&id) {
                t.timer = None;
            }
            act.pump(&id, ctx);
        }));
    }

    fn pump_all(&mut self, ctx: &mut Context<Self>) {
        let ids: Vec<String> = self.targets.keys().cloned().collect();
        for id in ids {
            self.pump(&id, ctx);
        }
    }

    /// What to record for an attempt: the verdict with the retry schedule applied (a
    /// retry past `max_retries` becomes a dead letter).
    fn decide(&self, done: &AttemptDone, now: i64) -> Decision {
        match &done.verdict {
            Verdict::Delivered { status } => Decision::Delivered { status: *status },
            Verdict::Retry {
                status,
                error,
                retry_after,
            } => {
                let unit: f64 = rand::random();
                match self.policy.delay(done.attempt, *retry_after, unit) {
                    Some(delay) => Decision::Retry {
                        status: *status,
                        error: error.clone(),
                        at: now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2),
                    },
                    None => Decision::Dead {
                        status: *status,
                        error: format!("{error} (gave up after {} attempts)", done.attempt),
                    },
                }
            }
            Verdict::Dead { status, error } => Decision::Dead {
                status: *status,
                error: error.clone(),
            },
        }
    }

    /// Records the collected outcomes in one transaction (group commit), then updates
    /// counters, metrics and failure streaks, and sends each endpoint its next delivery.
    ///
    /// When the outbox cannot record them, the outcomes are kept and recorded again later
    /// (backing off); their endpoints send nothing meanwhile.
    fn record_batch(&mut self, ctx: &mut Context<Self>) {
        let batch = std::mem::take(&mut self.done_batch);
        let now = now_ms();
        let decisions: Vec<Decision> = batch.iter().map(|d| self.decide(d, now)).collect();
        let records: Vec<AttemptRecord<'_>> = batch
            .iter()
            .zip(&decisions)
            .map(|(done, decision)| AttemptRecord {
                delivery_id: &done.delivery_id,
                outcome: decision.outcome(),
                latency_ms: i64::try_from(done.latency.as_millis()).unwrap_or(i64::MAX),
                now_ms: now,
            })
            .collect();
        let results = self.outbox.record_outcomes(&records);
        drop(records);
        let results = match results {
            Ok(results) => results,
            Err(err) => {
                let wait = self.storage_failed(
                    &format!("recording {} attempt outcome(s)", batch.len()),
                    &err,
                );
                self.unrecorded.extend(batch);
                if self.record_retry.is_none() {
                    self.record_retry = Some(ctx.run_later(wait, |act, ctx| {
                        act.record_retry = None;
                        let again = std::mem::take(&mut act.unrecorded);
                        act.done_batch.extend(again);
                        act.record_batch(ctx);
                    }));
                }
                return;
            }
        };
        self.storage_ok();
        for ((done, decision), result) in batch.iter().zip(&decisions).zip(results) {
            if let Some(t) = self.targets.get_mut(&done.endpoint_id) {
                t.in_flight = None;
            }
            match result {
                Ok(()) => self.account(done, decision, now),
                // The delivery was deleted or replayed meanwhile: nothing to account.
                Err(err) => log::debug!(
                    "webhooks: outcome of {} not recorded: {err}",
                    done.delivery_id
                ),
            }
            self.pump(&done.endpoint_id, ctx);
        }
        self.update_gauges();
        self.finish_drain_if_idle();
    }

    /// The in-memory side of a recorded outcome: counters, metrics, logs, failure streak.
    fn account(&mut self, done: &AttemptDone, decision: &Decision, now: i64) {
        let label = [done.endpoint_id.as_str()];
        let m = &self.metrics;
        m.webhook_attempts.with_label_values(&label).inc();
        m.webhook_latency
            .with_label_values(&label)
            .observe(done.latency.as_secs_f64());
        match decision {
            Decision::Delivered { .. } => {
                m.webhook_succeeded.with_label_values(&label).inc();
                self.pending -= 1;
                if let Some(t) = self.targets.get_mut(&done.endpoint_id) {
                    t.endpoint.failing_since = None;
                }
                return;
            }
            Decision::Retry { error, at, .. } => {
                log::debug!(
                    "webhooks: {} attempt {} to {} failed ({error}); retry in {} ms",
                    done.delivery_id,
                    done.attempt,
                    done.endpoint_id,
                    at - now
                );
            }
            Decision::Dead { error, .. } => {
                m.webhook_dead_lettered.inc();
                self.pending -= 1;
                self.dead += 1;
                log::warn!(
                    "webhooks: delivery {} to endpoint {} dead-lettered after {} attempt(s): {error}",
                    done.delivery_id,
                    done.endpoint_id,
                    done.attempt
                );
            }
        }
        m.webhook_failed.with_label_values(&label).inc();
        if let Err(err) = self.check_failing(&done.endpoint_id, now) {
            log::error!(
                "webhooks: could not disable failing endpoint {}: {err}",
                done.endpoint_id
            );
        }
    }

    /// Disables an endpoint whose failure streak has lasted `disable_after`.
    ///
    /// The streak is a run of failed *attempts*: while an endpoint has a delivery to retry it
    /// is attempted at least every [`RetryQueue::streak_gap`], so two failures further apart
    /// than that had a quiet period between them (no events), and the streak starts again
    /// at the later one. One failure, five quiet days and another failure do not disable.
    fn check_failing(&mut self, endpoint_id: &str, now: i64) -> Result<(), WebhookError> {
        let disable_after =
            i64::try_from(self.config.disable_after.as_millis()).unwrap_or(i64::MAX);
        let gap = self.streak_gap();
        let Some(target) = self.targets.get_mut(endpoint_id) else {
            return Ok(());
        };
        let quiet_before = target.last_failure_at.is_some_and(|last| now - last > gap);
        target.last_failure_at = Some(now);
        if quiet_before {
            target.endpoint.failing_since = Some(now);
            self.outbox.restart_failure_streak(endpoint_id, now)?;
            return Ok(());
        }
        let since = *target.endpoint.failing_since.get_or_insert(now);
        if target.endpoint.enabled && now - since >= disable_after {
            let reason = format!(
                "failing continuously since {} (webhooks.disable_after = {})",
                humantime::format_rfc3339_millis(
                    SystemTime::UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(since).unwrap_or(0))
                ),
                humantime::format_duration(self.config.disable_after)
            );
            self.outbox.disable_endpoint(endpoint_id, &reason)?;
            target.endpoint.enabled = false;
            target.endpoint.disabled_reason = Some(reason.clone());
            log::warn!("webhooks: endpoint {endpoint_id} disabled: {reason}");
        }
        Ok(())
    }

    /// The longest an endpoint that keeps failing waits between two attempts: its longest
    /// backoff or the longest `Retry-After` honoured, plus an attempt's timeout, twice over
    /// (for jitter and the rate limit).
    fn streak_gap(&self) -> i64 {
        let w = &self.config;
        let longest_wait = w
            .backoff
            .iter()
            .copied()
            .max()
            .unwrap_or_default()
            .max(w.max_retry_after);
        i64::try_from(((longest_wait + w.timeout) * 2).as_millis()).unwrap_or(i64::MAX)
    }

    /// Hourly upkeep: purges delivered deliveries past `webhooks.retention` and expires the
    /// backlog of disabled endpoints past `webhooks.disabled_backlog_ttl`.
    fn purge(&mut self) {
        let retention = i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
        match self
            .outbox
            .purge_delivered_before(now_ms().saturating_sub(retention))
        {
            Ok(0) => {}
            Ok(n) => log::info!("webhooks: purged {n} delivered deliveries"),
            Err(err) => log::error!("webhooks: purge failed: {err}"),
        }
        let ttl = i64::try_from(self.config.disabled_backlog_ttl.as_millis()).unwrap_or(i64::MAX);
        match self
            .outbox
            .expire_disabled_backlog(now_ms().saturating_sub(ttl))
        {
            Ok(expired) if expired.is_empty() => {}
            Ok(expired) => {
                for (endpoint, n) in expired {
                    self.metrics
                        .webhook_expired
                        .with_label_values(&[endpoint.as_str()])
                        .inc_by(n);
                    log::warn!(
                        "webhooks: endpoint {endpoint} is disabled; {n} of its pending deliveries \
                         were older than webhooks.disabled_backlog_ttl ({}) and were dropped",
                        humantime::format_duration(self.config.disabled_backlog_ttl)
                    );
                }
                self.recount();
            }
            Err(err) => log::error!("webhooks: expiring disabled backlogs failed: {err}"),
        }
    }

    fn validate(&self, url: Option<&str>, events: Option<&[String]>) -> Result<(), WebhookError> {
        if let Some(url) = url {
            ssrf::check_url(url, &self.settings.ssrf)?;
        }
        if let Some(events) = events {
            event::validate_event_types(events)?;
        }
        Ok(())
    }

    fn status(&self, endpoint: Endpoint) -> EndpointStatus {
        let pending = self.outbox.pending_count_for(&endpoint.id).unwrap_or(0);
        EndpointStatus { endpoint, pending }
    }

    fn finish_drain_if_idle(&mut self) {
        if self.draining && self.targets.values().all(|t| t.in_flight.is_none()) {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Actor for RetryQueue {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Emit and AttemptDone come with do_send and never wait; management calls (send)
        // wait only when this much is queued.
        ctx.set_mailbox_capacity(64 * 1024);
        match self.outbox.list_endpoints() {
            Ok(endpoints) => {
                for endpoint in endpoints {
                    self.start_target(endpoint, ctx);
                }
            }
            Err(err) => log::error!("webhooks: cannot list endpoints: {err}"),
        }
        self.publish_filters();
        self.recount();
        if self.pending > 0 {
            log::info!(
                "webhooks: {} pending deliveries in the outbox; resuming",
                self.pending
            );
        }
        // Upkeep at start too: a broker restarted more often than hourly still expires.
        self.purge();
        self.pump_all(ctx);
        ctx.run_interval(PURGE_EVERY, |act, _| act.purge());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for target in self.targets.values() {
            target.addr.do_send(StopTarget);
        }
    }
}

/// Raises an event: committed to the outbox for every matching endpoint before `reply`
/// hears how many deliveries were created. Sent with `do_send` (see
/// [`crate::webhooks::Webhooks::emit`] for why).
///
/// Group commit: the handler only collects; the events that arrived together (everything
/// actix takes from the mailbox in one turn, up to 256 messages) are committed in one
/// transaction right after, and only then answered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Emit {
    /// The event.
    pub event: WebhookEvent,
    /// Who waits for the commit, if anyone.
    pub reply: Option<EmitReply>,
}

impl Handler<Emit> for RetryQueue {
    type Result = ();

    fn handle(&mut self, msg: Emit, ctx: &mut Self::Context) {
        self.batch.push(msg);
        if self.batch.len() == 1 {
            // Spawned items run after the mailbox turn, so this sees the whole batch.
            ctx.spawn(actix::fut::ready(()).map(|_, act: &mut Self, ctx| act.commit_batch(ctx)));
        }
    }
}

impl RetryQueue {
    /// Commits the collected events for every endpoint that wants each (matched now, so a
    /// just-deleted endpoint is skipped), answers their senders, and wakes the endpoints.
    fn commit_batch(&mut self, ctx: &mut Context<Self>) {
        let batch = std::mem::take(&mut self.batch);
        let mut items: Vec<(&str, &str, &str)> = Vec::new();
        let mut counts = Vec::with_capacity(batch.len());
        for emit in &batch {
            let event = &emit.event;
            let room = event.room.as_deref();
            let before = items.len();
            let mut matching: Vec<&TargetState> = self
                .targets
                .values()
                .filter(|t| {
                    subscribed(
                        &t.endpoint.events,
                        &t.endpoint.rooms,
                        event.event_type,
                        room,
                    )
                })
                .collect();
            matching.sort_by(|a, b| a.endpoint.id.cmp(&b.endpoint.id));
            for t in matching {
                items.push((&t.endpoint.id, event.event_type, &event.body));
            }
            counts.push(items.len() - before);
        }
        let mut woken: Vec<String> = items.iter().map(|(id, _, _)| id.to_string()).collect();
        let stored = !items.is_empty();
        let outcome = if items.is_empty() {
            Ok(Vec::new())
        } else {
            self.outbox.enqueue_many(&items, now_ms())
        };
        match outcome {
            Ok(ids) => {
                if stored {
                    self.storage_ok();
                }
                self.pending += ids.len() as i64;
                for (emit, n) in batch.into_iter().zip(counts) {
                    if let Some(reply) = emit.reply {
                        let _ = reply.send(Ok(n));
                    }
                }
            }
            Err(err) => {
                // The publishers hear of it: their acknowledgements become errors.
                self.storage_failed(&format!("storing {} event(s)", batch.len()), &err);
                let message = err.to_string();
                for emit in batch {
                    if let Some(reply) = emit.reply {
                        let _ = reply.send(Err(WebhookError::Outbox(message.clone())));
                    }
                }
                woken.clear();
            }
        }
        self.update_gauges();
        woken.sort();
        woken.dedup();
        for endpoint_id in woken {
            self.pump(&endpoint_id, ctx);
        }
    }
}

/// A target's report on one attempt.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct AttemptDone {
    /// The endpoint.
    pub endpoint_id: String,
    /// The delivery.
    pub delivery_id: String,
    /// Which attempt this was (1-based).
    pub attempt: u32,
    /// How it ended.
    pub verdict: Verdict,
    /// How long it took (excluding the rate-limit wait).
    pub latency: Duration,
    /// When it started.
    pub started_at: SystemTime,
}

impl Handler<AttemptDone> for RetryQueue {
    type Result = ();

    fn handle(&mut self, done: AttemptDone, ctx: &mut Self::Context) {
        let ours = self
            .targets
            .get(&done.endpoint_id)
            .is_some_and(|t| t.in_flight.as_deref() == Some(done.delivery_id.as_str()));
        if !ours {
            // The endpoint was deleted (or replaced) while the attempt ran.
            return;
        }
        // Group commit, as for `Emit`: outcomes that arrive together share a transaction.
        self.done_batch.push(done);
        if self.done_batch.len() == 1 {
            ctx.spawn(actix::fut::ready(()).map(|_, act: &mut Self, ctx| act.record_batch(ctx)));
        }
    }
}

/// An endpoint with its backlog, as the API shows it.
#[derive(Debug, Clone)]
pub struct EndpointStatus {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its pending deliveries.
    pub pending: u64,
}

/// `POST /api/webhooks`. The URL must already have passed the SSRF guard with DNS
/// resolution (the API does that off this actor's thread).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Created, WebhookError>")]
pub struct CreateEndpoint {
    /// Where to POST.
    pub url: String,
    /// `whsec_…` (space-separated for several); generated when `None`.
    pub secret: Option<String>,
    /// Event types.
    pub events: Vec<String>,
    /// Room globs; every room when `None`.
    pub rooms: Option<Vec<String>>,
    /// Deliveries per second; `webhooks.rate_limit_per_s` when `None`.
    pub rate_limit_per_s: Option<u32>,
}

/// A new endpoint, with what the caller should know about it.
#[derive(Debug, Clone)]
pub struct Created {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// E.g. that another endpoint already delivers to the same URL.
    pub warnings: Vec<String>,
}

/// Whether two webhook URLs name the same receiver (compared as parsed, so case and default
/// ports do not hide a repeat).
fn same_url(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl Handler<CreateEndpoint> for RetryQueue {
    type Result = Result<Created, WebhookError>;

    fn handle(&mut self, msg: CreateEndpoint, ctx: &mut Self::Context) -> Self::Result {
        self.validate(Some(&msg.url), Some(&msg.events))?;
        let mut same: Vec<&str> = self
            .targets
            .values()
            .filter(|t| same_url(&t.endpoint.url, &msg.url))
            .map(|t| t.endpoint.id.as_str())
            .collect();
        same.sort_unstable();
        let mut warnings = Vec::new();
        if !same.is_empty() {
            let already = format!("{} already delivers to {}", same.join(", "), msg.url);
            if self.config.duplicate_urls == DuplicateUrls::Refuse {
                return Err(WebhookError::Conflict(format!(
                    "{already} (webhooks.duplicate_urls = \"refuse\")"
                )));
            }
            log::warn!("webhooks: registering another endpoint for a URL: {already}");
            warnings.push(format!(
                "{already}: each endpoint gets its own copy of every event it subscribes to"
            ));
        }
        let secret = match &msg.secret {
            Some(s) => normalize_secrets(s)?,
            None => WebhookSecret::generate().expose_secret().to_owned(),
        };
        let rate = msg.rate_limit_per_s.unwrap_or(self.config.rate_limit_per_s);
        if rate == 0 {
            return Err(WebhookError::Invalid(
                "rate_limit_per_s must be greater than zero".into(),
            ));
        }
        let endpoint = self.outbox.insert_endpoint(
            NewEndpoint {
                url: msg.url,
                secret,
                events: msg.events,
                rooms: msg.rooms.unwrap_or_else(|| vec!["*".into()]),
                rate_limit_per_s: rate,
            },
            now_ms(),
        )?;
        log::info!(
            "webhooks: endpoint {} created for {}",
            endpoint.id,
            endpoint.url
        );
        self.start_target(endpoint.clone(), ctx);
        self.publish_filters();
        Ok(Created { endpoint, warnings })
    }
}

/// `GET /api/webhooks`.
#[derive(Message)]
#[rtype(result = "Result<Vec<EndpointStatus>, WebhookError>")]
pub struct ListEndpoints;

impl Handler<ListEndpoints> for RetryQueue {
    type Result = Result<Vec<EndpointStatus>, WebhookError>;

    fn handle(&mut self, _: ListEndpoints, _: &mut Self::Context) -> Self::Result {
        let endpoints = self.outbox.list_endpoints()?;
        Ok(endpoints.into_iter().map(|e| self.status(e)).collect())
    }
}

/// `GET /api/webhooks/{id}`.
#[derive(Message)]
#[rtype(result = "Result<EndpointStatus, WebhookError>")]
pub struct GetEndpoint(pub String);

impl Handler<GetEndpoint> for RetryQueue {
    type Result = Result<EndpointStatus, WebhookError>;

    fn handle(&mut self, GetEndpoint(id): GetEndpoint, _: &mut Self::Context) -> Self::Result {
        let endpoint = self.outbox.get_endpoint(&id)?;
        Ok(self.status(endpoint))
    }
}

/// `PATCH /api/webhooks/{id}`. A new URL must already have passed the SSRF guard with DNS
/// resolution.
#[derive(Message)]
#[rtype(result = "Result<EndpointStatus, WebhookError>")]
pub struct UpdateEndpoint {
    /// The endpoint.
    pub id: String,
    /// What changes.
    pub patch: EndpointPatch,
}

impl Handler<UpdateEndpoint> for RetryQueue {
    type Result = Result<EndpointStatus, WebhookError>;

    fn handle(&mut self, msg: UpdateEndpoint, ctx: &mut Self::Context) -> Self::Result {
        let mut patch = msg.patch;
        self.validate(patch.url.as_deref(), patch.events.as_deref())?;
        if let Some(secret) = &patch.secret {
            patch.secret = Some(normalize_secrets(secret)?);
        }
        if patch.rate_limit_per_s == Some(0) {
            return Err(WebhookError::Invalid(
                "rate_limit_per_s must be greater than zero".into(),
            ));
        }
        let endpoint = self.outbox.update_endpoint(&msg.id, patch)?;
        if let Some(target) = self.targets.get_mut(&msg.id) {
            target.addr.do_send(Reconfigure(endpoint.clone()));
            target.endpoint = endpoint.clone();
        }
        self.publish_filters();
        log::info!(
            "webhooks: endpoint {} updated (enabled: {})",
            endpoint.id,
            endpoint.enabled
        );
        self.pump(&msg.id, ctx);
        Ok(self.status(endpoint))
    }
}

/// `DELETE /api/webhooks/{id}`: the endpoint, its pending deliveries and its DLQ entries.
#[derive(Message)]
#[rtype(result = "Result<(), WebhookError>")]
pub struct DeleteEndpoint(pub String);

impl Handler<DeleteEndpoint> for RetryQueue {
    type Result = Result<(), WebhookError>;

    fn handle(
        &mut self,
        DeleteEndpoint(id): DeleteEndpoint,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        self.outbox.delete_endpoint(&id)?;
        if let Some(target) = self.targets.remove(&id) {
            if let Some(timer) = target.timer {
                ctx.cancel_future(timer);
            }
            target.addr.do_send(StopTarget);
        }
        self.publish_filters();
        self.recount();
        self.finish_drain_if_idle();
        log::info!("webhooks: endpoint {id} deleted");
        Ok(())
    }
}

/// `GET /api/webhooks/{id}/deliveries`: newest first, with attempts.
#[derive(Message)]
#[rtype(result = "Result<Vec<DeliveryHistory>, WebhookError>")]
pub struct ListDeliveries {
    /// The endpoint.
    pub endpoint_id: String,
    /// At most this many.
    pub limit: usize,
}

impl Handler<ListDeliveries> for RetryQueue {
    type Result = Result<Vec<DeliveryHistory>, WebhookError>;

    fn handle(&mut self, msg: ListDeliveries, _: &mut Self::Context) -> Self::Result {
        self.outbox.get_endpoint(&msg.endpoint_id)?;
        Ok(self.outbox.deliveries_for(&msg.endpoint_id, msg.limit)?)
    }
}

/// `GET /api/webhooks/dlq`: newest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<Delivery>, WebhookError>")]
pub struct ListDeadLetters {
    /// At most this many.
    pub limit: usize,
}

impl Handler<ListDeadLetters> for RetryQueue {
    type Result = Result<Vec<Delivery>, WebhookError>;

    fn handle(&mut self, msg: ListDeadLetters, _: &mut Self::Context) -> Self::Result {
        Ok(self.outbox.dead_letters(msg.limit)?)
    }
}

/// `POST /api/webhooks/dlq/{delivery_id}/replay`: back to pending, attempts reset.
#[derive(Message)]
#[rtype(result = "Result<Delivery, WebhookError>")]
pub struct Replay(pub String);

impl Handler<Replay> for RetryQueue {
    type Result = Result<Delivery, WebhookError>;

    fn handle(&mut self, Replay(id): Replay, ctx: &mut Self::Context) -> Self::Result {
        self.outbox.replay(&id, now_ms())?;
        let delivery = self.outbox.get_delivery(&id)?;
        self.dead -= 1;
        self.pending += 1;
        self.update_gauges();
        log::info!(
            "webhooks: delivery {id} replayed to endpoint {}",
            delivery.endpoint_id
        );
        self.pump(&delivery.endpoint_id, ctx);
        Ok(delivery)
    }
}

/// `POST /api/webhooks/{id}/test`: queues a `webhook.ping` for one endpoint.
#[derive(Message)]
#[rtype(result = "Result<String, WebhookError>")]
pub struct SendTest(pub String);

impl Handler<SendTest> for RetryQueue {
    type Result = Result<String, WebhookError>;

    fn handle(&mut self, SendTest(id): SendTest, ctx: &mut Self::Context) -> Self::Result {
        if !self.targets.contains_key(&id) {
            return Err(WebhookError::NotFound(format!("endpoint {id}")));
        }
        let event = WebhookEvent::ping(&id);
        let delivery_id = self
            .outbox
            .enqueue(&id, event.event_type, &event.body, now_ms())?;
        self.pending += 1;
        self.update_gauges();
        self.pump(&id, ctx);
        Ok(delivery_id)
    }
}

/// Shutdown: start no more attempts and wait (up to `deadline`) for those in flight; what
/// is left stays pending in the outbox for the next start.
#[derive(Message)]
#[rtype(result = "DrainReport")]
pub struct Drain {
    /// How long in-flight attempts get.
    pub deadline: Duration,
}

/// What a drain saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Attempts in flight when the drain began.
    pub in_flight: usize,
    /// Whether they all finished in time.
    pub finished: bool,
    /// Deliveries left pending in the outbox.
    pub pending: u64,
}

impl Handler<Drain> for RetryQueue {
    type Result = ResponseActFuture<Self, DrainReport>;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        self.draining = true;
        for target in self.targets.values_mut() {
            if let Some(timer) = target.timer.take() {
                ctx.cancel_future(timer);
            }
        }
        let in_flight = self
            .targets
            .values()
            .filter(|t| t.in_flight.is_some())
            .count();
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        self.finish_drain_if_idle();
        if in_flight > 0 {
            log::info!("shutdown: waiting for {in_flight} webhook attempt(s) in flight");
        }
        Box::pin(
            async move { tokio::time::timeout(msg.deadline, rx).await.is_ok() }
                .into_actor(self)
                .map(move |finished, act, _| {
                    let pending = act.outbox.pending_count().unwrap_or(0);
                    if !finished {
                        log::warn!("shutdown: webhook attempts still in flight at the deadline; they stay pending");
                    }
                    DrainReport {
                        in_flight,
                        finished,
                        pending,
                    }
                }),
        )
    }
}
