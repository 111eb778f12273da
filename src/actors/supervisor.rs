//! Supervisor actor: the broker's clock and its exit.
//!
//! Every `heartbeat.interval` it asks the Registry for the live sessions and sends each a
//! [`Control::Heartbeat`]: the session pings its peer or, if nothing came in for `heartbeat.timeout`,
//! closes with 4010. On shutdown it first keeps serving for `server.drain_delay` (with
//! `/readyz` answering 503, so load balancers take the broker out of rotation, and keep-alive
//! connections get that answer rather than a reset), then stops accepting, tells every
//! session to close with 1012,
//! waits for them (bounded by `server.shutdown_timeout`), lets the webhook attempts in flight
//! finish (bounded by the same timeout; undelivered events stay in the outbox), and only then
//! stops the HTTP server: open WebSockets would otherwise hold actix-web's own graceful stop
//! until its timeout (actix-web issue 3169).

use std::time::Duration;

use actix::prelude::*;
use actix_web::dev::ServerHandle;

use super::registry::{ListSessions, Registry, WaitUntilEmpty};
use super::retry_queue::{Drain, RetryQueue};
use super::session::Control;
use crate::config::ServerConfig;

/// The Supervisor actor.
pub struct Supervisor {
    registry: Addr<Registry>,
    webhooks: Addr<RetryQueue>,
    heartbeat_interval: Duration,
    shutdown_timeout: Duration,
    drain_delay: Duration,
    shutting_down: bool,
}

impl Supervisor {
    /// A supervisor ticking every `heartbeat_interval`, shutting down as `server` says.
    pub fn new(
        registry: Addr<Registry>,
        webhooks: Addr<RetryQueue>,
        heartbeat_interval: Duration,
        server: &ServerConfig,
    ) -> Supervisor {
        Supervisor {
            registry,
            webhooks,
            heartbeat_interval,
            shutdown_timeout: server.shutdown_timeout,
            drain_delay: server.drain_delay,
            shutting_down: false,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        self.registry
            .send(ListSessions)
            .into_actor(self)
            .map(|sessions, _, _| {
                for session in sessions.unwrap_or_default() {
                    session.do_send(Control::Heartbeat);
                }
            })
            .spawn(ctx);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.heartbeat_interval, |act, ctx| act.tick(ctx));
    }
}

/// Graceful shutdown. Resolves when every session closed or the deadline passed, and the
/// HTTP server (when given) has stopped.
#[derive(Message)]
#[rtype(result = "ShutdownReport")]
pub struct Shutdown {
    /// The HTTP server to pause first and stop last.
    pub server: Option<ServerHandle>,
}

/// What a shutdown saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Sessions told to close.
    pub sessions: usize,
    /// Whether all of them closed before the deadline.
    pub drained: bool,
    /// Webhook attempts in flight when sessions were closed.
    pub webhook_attempts: usize,
    /// Whether those attempts finished before the deadline.
    pub webhooks_drained: bool,
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<ShutdownReport>;

    fn handle(&mut self, msg: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        let registry = self.registry.clone();
        let webhooks = self.webhooks.clone();
        let deadline = self.shutdown_timeout;
        let drain_delay = self.drain_delay;
        Box::pin(async move {
            if !drain_delay.is_zero() {
                log::info!(
                    "shutdown: /readyz answers 503; closing sessions in {drain_delay:?} (server.drain_delay)"
                );
                tokio::time::sleep(drain_delay).await;
            }
            if let Some(server) = &msg.server {
                server.pause().await;
            }
            let sessions = registry.send(ListSessions).await.unwrap_or_default();
            log::info!("shutdown: closing {} sessions with 1012", sessions.len());
            for session in &sessions {
                session.do_send(Control::Shutdown);
            }
            let drained = match registry.send(WaitUntilEmpty).await {
                Ok(empty) => tokio::time::timeout(deadline, empty).await.is_ok(),
                Err(_) => true,
            };
            if !drained {
                log::warn!("shutdown: deadline of {deadline:?} passed with sessions still open");
            }
            let webhook_report = webhooks.send(Drain { deadline }).await.ok();
            if let Some(server) = msg.server {
                server.stop(true).await;
            }
            ShutdownReport {
                sessions: sessions.len(),
                drained,
                webhook_attempts: webhook_report.map_or(0, |r| r.in_flight),
                webhooks_drained: webhook_report.is_some_and(|r| r.finished),
            }
        })
    }
}
