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
//!
//! This file is the delivery machinery; `manage.rs` holds the HTTP API's endpoint management
//! messages, and `webhooks::setup` opens the outbox at start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use tokio::sync::oneshot;

mod manage;
mod shared;

pub use manage::{
    CreateEndpoint, DeleteEndpoint, EndpointStatus, GetEndpoint, ListDeadLetters, ListDeliveries,
    ListEndpoints, Replay, SendTest, UpdateEndpoint,
};

use super::webhook_target::{Attempt, StopTarget, TargetSettings, WebhookTarget};
use crate::config::{Config, WebhooksConfig};
use crate::metrics::Metrics;
use crate::webhooks::event::{self, WebhookEvent};
use crate::webhooks::filter::{subscribed, EndpointFilter, Filters};
use crate::webhooks::outbox::{AttemptRecord, Endpoint, Outbox};
use crate::webhooks::policy::{Outcome, RetryPolicy};
use crate::webhooks::shared::EndpointStore;
use crate::webhooks::{now_ms, ssrf, OutboxHealth, WebhookError};

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
    /// Where API endpoints are shared with other nodes (a shared engine).
    store: Option<Arc<dyn EndpointStore>>,
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
        tls: Arc<rustls::ClientConfig>,
    ) -> RetryQueue {
        let w = &config.webhooks;
        let settings = TargetSettings {
            timeout: w.timeout,
            ssrf: config.ssrf_policy(),
            body_hmac_header: (!w.body_hmac_header.is_empty()).then(|| w.body_hmac_header.clone()),
            max_retry_after: w.max_retry_after,
            tls,
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
            store: None,
        }
    }

    /// Shares the endpoints created through the API with other nodes through `store`.
    pub fn sharing(mut self, store: Option<Arc<dyn EndpointStore>>) -> RetryQueue {
        self.store = store;
        self
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
                .map(|t| EndpointFilter::of(&t.endpoint))
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

    /// What to record for an attempt: its outcome with the retry schedule applied (a retry
    /// past `max_retries` becomes a dead letter), and for a retry, when (unix ms).
    fn decide(&self, done: &AttemptDone, now: i64) -> (Outcome, i64) {
        let Outcome::Retry {
            status,
            error,
            retry_after,
        } = &done.outcome
        else {
            return (done.outcome.clone(), 0);
        };
        let unit: f64 = rand::random();
        match self.policy.delay(done.attempt, *retry_after, unit) {
            Some(delay) => (
                done.outcome.clone(),
                now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2),
            ),
            None => (
                Outcome::Dead {
                    status: *status,
                    error: format!("{error} (gave up after {} attempts)", done.attempt),
                },
                0,
            ),
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
        let decisions: Vec<(Outcome, i64)> = batch.iter().map(|d| self.decide(d, now)).collect();
        let records: Vec<AttemptRecord<'_>> = batch
            .iter()
            .zip(&decisions)
            .map(|(done, (outcome, retry_at))| AttemptRecord {
                delivery_id: &done.delivery_id,
                outcome,
                next_attempt_at_ms: *retry_at,
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
        for ((done, (outcome, retry_at)), result) in batch.iter().zip(&decisions).zip(results) {
            if let Some(t) = self.targets.get_mut(&done.endpoint_id) {
                t.in_flight = None;
            }
            match result {
                Ok(()) => self.account(done, outcome, *retry_at, now),
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
    fn account(&mut self, done: &AttemptDone, outcome: &Outcome, retry_at: i64, now: i64) {
        let label = [done.endpoint_id.as_str()];
        let m = &self.metrics;
        m.webhook_attempts.with_label_values(&label).inc();
        m.webhook_latency
            .with_label_values(&label)
            .observe(done.latency.as_secs_f64());
        match outcome {
            Outcome::Delivered { .. } => {
                m.webhook_succeeded.with_label_values(&label).inc();
                self.pending -= 1;
                if let Some(t) = self.targets.get_mut(&done.endpoint_id) {
                    t.endpoint.failing_since = None;
                }
                return;
            }
            Outcome::Retry { error, .. } => {
                log::debug!(
                    "webhooks: {} attempt {} to {} failed ({error}); retry in {} ms",
                    done.delivery_id,
                    done.attempt,
                    done.endpoint_id,
                    retry_at - now
                );
            }
            Outcome::Dead { error, .. } => {
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
        self.watch_shared_endpoints(ctx);
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
    pub outcome: Outcome,
    /// How long it took (excluding the rate-limit wait); the outbox records the start
    /// as the recording time minus this.
    pub latency: Duration,
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
