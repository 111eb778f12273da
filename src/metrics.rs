//! Prometheus metrics, one registry per broker (so embedded and test brokers do not share
//! counters). Hot paths touch only pre-registered atomic counters: a publish adds its
//! delivery count once, never per member.

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::actors::router::{HandlerError, HandlerRequest, Reply};
use crate::middleware::Middleware;
use crate::Broker;

/// Every metric the broker exports.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Sessions by state: `open` (registered) and `detached` (kept for resume).
    pub sessions: IntGaugeVec,
    /// Running room actors.
    pub rooms: IntGauge,
    /// Inbound messages by type.
    pub messages_in: IntCounterVec,
    /// Messages published into rooms, by type (each counted once, not per member).
    pub messages_published: IntCounterVec,
    /// Room messages queued to members (one per member per message).
    pub deliveries: IntCounter,
    /// Messages replayed from history (join with since_seq, resume).
    pub replayed: IntCounter,
    /// Sessions closed with 4009 because their outbound queue was full.
    pub slow_consumer_closes: IntCounter,
    /// TCP connections the write deadline reset, by reason (`write_stalled`: a write
    /// waited `limits.write_timeout` on a peer that does not read; `close_unfinished`: a
    /// close was not done within it).
    pub connection_resets: IntCounterVec,
    /// Requests refused by a rate limit, by scope (`session`, `router`, `api`).
    pub rate_limited: IntCounterVec,
    /// Authentication failures by reason.
    pub auth_failures: IntCounterVec,
    /// Requests refused by a size or capacity limit, by limit (`sessions_per_user`, `rooms`,
    /// `message_id`, `json_depth`).
    pub limit_refusals: IntCounterVec,
    /// WebSocket connections an endpoint refused, by endpoint path and reason (`auth`,
    /// `forbidden`, `param`).
    pub endpoint_refusals: IntCounterVec,
    /// WebSocket handshakes refused before the upgrade by a connection cap, by reason
    /// (`max_connections`, `max_connections_per_ip`, `handshake_rate`).
    pub connections_refused: IntCounterVec,
    /// Messages a Redis bridge carried, by bridge and direction (`in`: Redis to a room,
    /// `out`: a room to Redis).
    pub bridge_messages: IntCounterVec,
    /// Messages a Redis bridge did not carry, by bridge and reason (`not_json`, `room_name`,
    /// `refused`, `unavailable`, `queue_full`).
    pub bridge_dropped: IntCounterVec,
    /// Reconnections of a Redis bridge's connection, by bridge.
    pub bridge_reconnects: IntCounterVec,
    /// 1 while a Redis bridge is subscribed and carrying messages in on this node, by bridge
    /// (with the Redis engine only the leader does).
    pub bridge_active: IntGaugeVec,
    /// ASAP requests answered, by transport (`ws`, `http`, `stream`) and outcome (`ok`, or
    /// the error's taxonomy name such as `handler_not_found`).
    pub asap_requests: IntCounterVec,
    /// Agent URNs that connected ASAP agents serve on this node.
    pub asap_agents: IntGauge,
    /// Application handler latency by message type.
    pub handler_seconds: HistogramVec,
    /// HTTP requests by route pattern and status.
    pub http_requests: IntCounterVec,
    /// Webhook delivery attempts by endpoint.
    pub webhook_attempts: IntCounterVec,
    /// Webhook attempts answered 2xx, by endpoint.
    pub webhook_succeeded: IntCounterVec,
    /// Webhook attempts that failed (any reason), by endpoint.
    pub webhook_failed: IntCounterVec,
    /// Deliveries moved to the dead-letter queue.
    pub webhook_dead_lettered: IntCounter,
    /// Webhook attempt latency by endpoint.
    pub webhook_latency: HistogramVec,
    /// Pending webhook deliveries in the outbox.
    pub webhook_queue_depth: IntGauge,
    /// Pending deliveries of disabled endpoints dropped after `disabled_backlog_ttl`.
    pub webhook_expired: IntCounterVec,
    /// Deliveries in the dead-letter queue.
    pub webhook_dlq_size: IntGauge,
    /// Failed webhook outbox operations (disk full, I/O errors, damage).
    pub webhook_outbox_errors: IntCounter,
    /// 1 while the webhook outbox works, 0 after a failed operation until the next success.
    pub webhook_outbox_healthy: IntGauge,
    /// 1 while the engine reaches its store (always 1 for the memory engine).
    pub engine_up: IntGauge,
    /// Times the engine connected to its store again after losing it.
    pub engine_reconnects: IntCounter,
    /// Engine operations that failed (store unreachable, timeout).
    pub engine_errors: IntCounter,
    /// Gaps in a room's feed that history could no longer fill (members missed messages).
    pub feed_gaps_lost: IntCounter,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            connections: IntGauge::new("switchboard_connections", "Open WebSocket connections")
                .expect("valid metric"),
            sessions: IntGaugeVec::new(
                Opts::new("switchboard_sessions", "Sessions by state"),
                &["state"],
            )
            .expect("valid metric"),
            rooms: IntGauge::new("switchboard_rooms", "Running rooms").expect("valid metric"),
            messages_in: IntCounterVec::new(
                Opts::new("switchboard_messages_in_total", "Inbound messages by type"),
                &["type"],
            )
            .expect("valid metric"),
            messages_published: IntCounterVec::new(
                Opts::new(
                    "switchboard_messages_published_total",
                    "Messages published into rooms by type",
                ),
                &["type"],
            )
            .expect("valid metric"),
            deliveries: IntCounter::new(
                "switchboard_deliveries_total",
                "Room messages queued to members",
            )
            .expect("valid metric"),
            replayed: IntCounter::new(
                "switchboard_replayed_messages_total",
                "Messages replayed from history",
            )
            .expect("valid metric"),
            connection_resets: IntCounterVec::new(
                Opts::new(
                    "switchboard_connection_resets_total",
                    "TCP connections the write deadline reset, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            slow_consumer_closes: IntCounter::new(
                "switchboard_slow_consumer_closes_total",
                "Sessions closed with 4009 (outbound queue full)",
            )
            .expect("valid metric"),
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "switchboard_rate_limited_total",
                    "Requests refused by a rate limit",
                ),
                &["scope"],
            )
            .expect("valid metric"),
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "switchboard_auth_failures_total",
                    "Authentication failures by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            endpoint_refusals: IntCounterVec::new(
                Opts::new(
                    "switchboard_endpoint_refusals_total",
                    "WebSocket connections an endpoint refused, by reason",
                ),
                &["endpoint", "reason"],
            )
            .expect("valid metric"),
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "switchboard_connections_refused_total",
                    "WebSocket handshakes refused before the upgrade by a connection cap",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            bridge_messages: IntCounterVec::new(
                Opts::new(
                    "switchboard_bridge_messages_total",
                    "Messages a Redis bridge carried, by direction",
                ),
                &["bridge", "direction"],
            )
            .expect("valid metric"),
            bridge_dropped: IntCounterVec::new(
                Opts::new(
                    "switchboard_bridge_dropped_total",
                    "Messages a Redis bridge did not carry, by reason",
                ),
                &["bridge", "reason"],
            )
            .expect("valid metric"),
            bridge_reconnects: IntCounterVec::new(
                Opts::new(
                    "switchboard_bridge_reconnects_total",
                    "Reconnections of a Redis bridge",
                ),
                &["bridge"],
            )
            .expect("valid metric"),
            bridge_active: IntGaugeVec::new(
                Opts::new(
                    "switchboard_bridge_active",
                    "1 while a Redis bridge carries messages in on this node",
                ),
                &["bridge"],
            )
            .expect("valid metric"),
            asap_requests: IntCounterVec::new(
                Opts::new(
                    "switchboard_asap_requests_total",
                    "ASAP requests answered, by transport and outcome",
                ),
                &["transport", "outcome"],
            )
            .expect("valid metric"),
            asap_agents: IntGauge::new(
                "switchboard_asap_agents",
                "Agent URNs served by ASAP agents connected to this node",
            )
            .expect("valid metric"),
            limit_refusals: IntCounterVec::new(
                Opts::new(
                    "switchboard_limit_refusals_total",
                    "Requests refused by a size or capacity limit",
                ),
                &["limit"],
            )
            .expect("valid metric"),
            handler_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "switchboard_handler_duration_seconds",
                    "Application handler latency",
                )
                .buckets(vec![
                    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
                ]),
                &["type"],
            )
            .expect("valid metric"),
            http_requests: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_requests_total",
                    "HTTP requests by route and status",
                ),
                &["route", "status"],
            )
            .expect("valid metric"),
            webhook_attempts: IntCounterVec::new(
                Opts::new(
                    "switchboard_webhook_attempts_total",
                    "Webhook delivery attempts by endpoint",
                ),
                &["endpoint"],
            )
            .expect("valid metric"),
            webhook_succeeded: IntCounterVec::new(
                Opts::new(
                    "switchboard_webhook_succeeded_total",
                    "Webhook attempts answered 2xx by endpoint",
                ),
                &["endpoint"],
            )
            .expect("valid metric"),
            webhook_failed: IntCounterVec::new(
                Opts::new(
                    "switchboard_webhook_failed_total",
                    "Failed webhook attempts by endpoint",
                ),
                &["endpoint"],
            )
            .expect("valid metric"),
            webhook_dead_lettered: IntCounter::new(
                "switchboard_webhook_dead_lettered_total",
                "Webhook deliveries moved to the dead-letter queue",
            )
            .expect("valid metric"),
            webhook_latency: HistogramVec::new(
                HistogramOpts::new(
                    "switchboard_webhook_latency_seconds",
                    "Webhook attempt latency",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["endpoint"],
            )
            .expect("valid metric"),
            webhook_expired: IntCounterVec::new(
                Opts::new(
                    "switchboard_webhook_expired_total",
                    "Pending deliveries of disabled endpoints dropped after webhooks.disabled_backlog_ttl",
                ),
                &["endpoint"],
            )
            .expect("valid metric"),
            webhook_queue_depth: IntGauge::new(
                "switchboard_webhook_queue_depth",
                "Pending webhook deliveries",
            )
            .expect("valid metric"),
            webhook_dlq_size: IntGauge::new(
                "switchboard_webhook_dlq_size",
                "Webhook deliveries in the dead-letter queue",
            )
            .expect("valid metric"),
            webhook_outbox_errors: IntCounter::new(
                "switchboard_webhook_outbox_errors_total",
                "Failed webhook outbox operations",
            )
            .expect("valid metric"),
            webhook_outbox_healthy: IntGauge::new(
                "switchboard_webhook_outbox_healthy",
                "1 while the webhook outbox works, 0 while it fails",
            )
            .expect("valid metric"),
            engine_up: IntGauge::new(
                "switchboard_engine_up",
                "1 while the engine reaches its store (Redis), 0 while it does not",
            )
            .expect("valid metric"),
            engine_reconnects: IntCounter::new(
                "switchboard_engine_reconnects_total",
                "Times the engine connected to its store again after losing it",
            )
            .expect("valid metric"),
            engine_errors: IntCounter::new(
                "switchboard_engine_errors_total",
                "Engine operations that failed (store unreachable, timeout)",
            )
            .expect("valid metric"),
            feed_gaps_lost: IntCounter::new(
                "switchboard_feed_gaps_lost_total",
                "Gaps in a room's feed that history could no longer fill",
            )
            .expect("valid metric"),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 36] = [
            Box::new(m.connections.clone()),
            Box::new(m.sessions.clone()),
            Box::new(m.rooms.clone()),
            Box::new(m.messages_in.clone()),
            Box::new(m.messages_published.clone()),
            Box::new(m.deliveries.clone()),
            Box::new(m.replayed.clone()),
            Box::new(m.slow_consumer_closes.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.auth_failures.clone()),
            Box::new(m.limit_refusals.clone()),
            Box::new(m.endpoint_refusals.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.connection_resets.clone()),
            Box::new(m.bridge_messages.clone()),
            Box::new(m.bridge_dropped.clone()),
            Box::new(m.bridge_reconnects.clone()),
            Box::new(m.bridge_active.clone()),
            Box::new(m.asap_requests.clone()),
            Box::new(m.asap_agents.clone()),
            Box::new(m.handler_seconds.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.webhook_attempts.clone()),
            Box::new(m.webhook_succeeded.clone()),
            Box::new(m.webhook_failed.clone()),
            Box::new(m.webhook_dead_lettered.clone()),
            Box::new(m.webhook_latency.clone()),
            Box::new(m.webhook_queue_depth.clone()),
            Box::new(m.webhook_expired.clone()),
            Box::new(m.webhook_dlq_size.clone()),
            Box::new(m.webhook_outbox_errors.clone()),
            Box::new(m.webhook_outbox_healthy.clone()),
            Box::new(m.engine_up.clone()),
            Box::new(m.engine_reconnects.clone()),
            Box::new(m.engine_errors.clone()),
            Box::new(m.feed_gaps_lost.clone()),
        ];
        m.webhook_outbox_healthy.set(1);
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Copies the engine's health into its metrics (read when scraped).
    pub fn observe_engine(&self, status: &crate::engine::EngineStatus) {
        self.engine_up.set(i64::from(status.down.is_none()));
        if let Some(detached) = status.detached {
            self.sessions
                .with_label_values(&["detached"])
                .set(detached as i64);
        }
        let counters = [
            (&self.engine_reconnects, status.reconnects),
            (&self.engine_errors, status.errors),
        ];
        for (counter, total) in counters {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Metrics {
    /// Counts a request refused by `limit`.
    pub fn limit_refused(&self, limit: &str) {
        self.limit_refusals.with_label_values(&[limit]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The label for an inbound message type: broker types by name, application types only
/// when a handler is registered (so clients cannot inflate label cardinality).
/// `registered` is only asked for application types, keeping room traffic off the route
/// table.
pub fn type_label(msg_type: &str, registered: impl FnOnce() -> bool) -> &str {
    use crate::protocol::types::{is_broker_type, Command};
    if let Some(command) = Command::from_type(msg_type) {
        command.msg_type()
    } else if is_broker_type(msg_type) {
        "unknown"
    } else if registered() {
        msg_type
    } else {
        "unknown"
    }
}

/// Router middleware recording handler latency.
pub struct HandlerTiming(pub std::sync::Arc<Metrics>);

impl Middleware for HandlerTiming {
    fn after(&self, req: &HandlerRequest, _: &Result<Reply, HandlerError>, elapsed: Duration) {
        if let Ok(h) = self
            .0
            .handler_seconds
            .get_metric_with_label_values(&[&req.msg_type])
        {
            h.observe(elapsed.as_secs_f64());
        }
    }
}

/// `GET /metrics`: every metric in the Prometheus text format (no authentication).
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        content_type = "text/plain", body = String)))]
pub async fn endpoint(broker: web::Data<Broker>) -> HttpResponse {
    broker.metrics().observe_engine(&broker.engine().status());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(broker.metrics().render())
}

/// HTTP middleware counting requests by route pattern and status. `server::serve` wraps
/// the whole app with it; embedders can do the same with
/// `App::new().wrap(actix_web::middleware::from_fn(switchboard::metrics::track_http))`.
pub async fn track_http(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let metrics = req
        .app_data::<web::Data<Broker>>()
        .map(|b| b.metrics().clone());
    let res = next.call(req).await?;
    if let Some(metrics) = metrics {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        metrics
            .http_requests
            .with_label_values(&[route.as_str(), res.status().as_str()])
            .inc();
    }
    Ok(res)
}
