//! The broker as a value: starts the actors and mounts the HTTP/WebSocket routes.
//!
//! This is the embedding API. Inside a running actix system, [`Broker::start`] starts the
//! Registry, Router, Supervisor and the room arbiters; [`Broker::configure`] mounts the
//! broker's routes on any actix-web `App`; [`Broker::register_handler`] plugs an
//! application actor in for a message type.

pub(crate) mod rooms;
mod threads;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::dev::ServerHandle;
use actix_web::web;
use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::actors::registry::{Counts, GetCounts, Registry};
use crate::actors::retry_queue::RetryQueue;
use crate::actors::router::{
    AddMiddleware, HandlerError, HandlerRequest, Origins, RegisterHandler, Router, Routes,
};
use crate::actors::supervisor::{Shutdown, ShutdownReport, Supervisor};
use crate::asap::Skill;
use crate::auth::Authenticator;
use crate::bridge::redis::BridgeStop;
use crate::config::EngineKind;
use crate::config::{Config, ConfigError};
use crate::endpoint::{Endpoint, EndpointConfig, Framing};
use crate::engine::{Engine, MemoryEngine, RedisEngine};
use crate::http;
use crate::http::error::resource;
use crate::metrics::{self as metrics_mod, Metrics};
use crate::middleware::{self, Middleware};
use crate::webhooks::filter::Filters;
use crate::webhooks::{OutboxHealth, Webhooks};

/// What every session and route shares: read-only after start.
pub(crate) struct BrokerState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The Registry actor.
    pub registry: Addr<Registry>,
    /// The route table snapshot published by the Router.
    pub routes: Routes,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// False once shutdown has begun (`/readyz` answers 503).
    pub ready: AtomicBool,
    /// Per-caller limit of the HTTP API (`[api] requests_per_second`).
    pub api_limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The webhook queue and its filter snapshot.
    pub webhooks: Webhooks,
    /// Where rooms live.
    pub engine: Arc<dyn Engine>,
    /// ASAP agents, nonces and idempotent answers.
    pub asap: crate::asap::AsapState,
    /// The agent task service.
    pub tasks: crate::tasks::TasksState,
    /// Connection caps, checked before each WebSocket upgrade.
    pub admission: Arc<crate::transport::admission::Admission>,
}

/// Starts a broker with choices the config file cannot express (an engine object).
///
/// ```no_run
/// # fn demo(config: switchboard::Config, engine: std::sync::Arc<dyn switchboard::engine::Engine>)
/// # -> Result<(), switchboard::config::ConfigError> {
/// let broker = switchboard::Broker::builder(config).engine(engine).start()?;
/// # Ok(()) }
/// ```
pub struct BrokerBuilder {
    config: Config,
    engine: Option<Arc<dyn Engine>>,
}

impl BrokerBuilder {
    /// Rooms live in `engine` instead of the one `[engine] kind` names.
    pub fn engine(mut self, engine: Arc<dyn Engine>) -> BrokerBuilder {
        self.engine = Some(engine);
        self
    }

    /// Starts the broker's actors. Must be called inside a running actix system.
    pub fn start(self) -> Result<Broker, ConfigError> {
        match self.engine {
            Some(engine) => Broker::start_with_engine(self.config, engine),
            None => Broker::start(self.config),
        }
    }
}

/// The route of one WebSocket endpoint.
fn endpoint_resource(broker: &Broker, endpoint: Arc<Endpoint>) -> actix_web::Resource {
    resource(&endpoint.config.path, "GET")
        .app_data(web::Data::new(broker.clone()))
        .app_data(web::Data::from(endpoint))
        .route(web::get().to(http::ws::connect))
}

/// A running broker: cheap to clone, shared by every worker.
#[derive(Clone)]
pub struct Broker {
    state: Arc<BrokerState>,
    router: Addr<Router>,
    supervisor: Addr<Supervisor>,
    room_arbiters: Arc<Vec<ArbiterHandle>>,
    /// The outbox (SQLite) and the webhook targets (HTTP) each have a thread.
    webhook_arbiters: Arc<[ArbiterHandle; 2]>,
    /// Ends the `[[bridge.redis]]` tasks.
    bridges: Arc<BridgeStop>,
}

impl Broker {
    /// Checks what [`Broker::start`] would need besides a valid configuration, without
    /// starting anything or changing a file: the key files and the TLS certificate can be
    /// read, the webhook outbox can be opened (for `switchboard check-config`).
    pub fn preflight(config: &Config) -> Result<(), ConfigError> {
        config.validate()?;
        Authenticator::from_config(&config.auth)?;
        crate::tls::TlsCertificate::from_config(&config.server)?;
        crate::webhooks::tls::client_config(&config.webhooks)?;
        crate::webhooks::setup::check_outbox(config)
    }

    /// Starts the broker's actors with the engine `[engine] kind` names. Must be called
    /// inside a running actix system.
    pub fn start(config: Config) -> Result<Broker, ConfigError> {
        let engine: Arc<dyn Engine> =
            match config.engine.kind {
                EngineKind::Memory => Arc::new(MemoryEngine::default()),
                EngineKind::Redis => Arc::new(RedisEngine::start(&config.redis).map_err(|e| {
                    ConfigError::Invalid {
                        key: "redis.url".into(),
                        message: e.to_string(),
                    }
                })?),
            };
        Broker::start_with_engine(config, engine)
    }

    /// A builder, for choices beyond the config ([`BrokerBuilder::engine`]).
    pub fn builder(config: Config) -> BrokerBuilder {
        BrokerBuilder {
            config,
            engine: None,
        }
    }

    /// Starts the broker's actors over `engine` (an engine of the embedder's choice or
    /// making; `[engine] kind` is not consulted). Must be called inside a running actix
    /// system.
    pub fn start_with_engine(
        config: Config,
        engine: Arc<dyn Engine>,
    ) -> Result<Broker, ConfigError> {
        config.validate()?;
        let auth = Arc::new(Authenticator::from_config(&config.auth)?);
        auth.start_key_refresh();
        let config = Arc::new(config);
        let shard_count = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let room_arbiters: Vec<ArbiterHandle> =
            (0..shard_count).map(|_| threads::room_arbiter()).collect();
        let metrics = Arc::new(Metrics::new());
        let filters = Filters::default();
        let tls = crate::webhooks::tls::client_config(&config.webhooks)?;
        let outbox = crate::webhooks::setup::open_outbox(&config, &filters)?;
        let outbox_arbiter = Arbiter::new().handle();
        let delivery_arbiter = Arbiter::new().handle();
        let health = OutboxHealth::default();
        let queue = {
            let (config, filters, metrics) = (config.clone(), filters.clone(), metrics.clone());
            let (delivery_arbiter, health) = (delivery_arbiter.clone(), health.clone());
            let tls = tls.clone();
            let store = engine.endpoint_store();
            RetryQueue::start_in_arbiter(&outbox_arbiter, move |_| {
                RetryQueue::new(
                    outbox,
                    &config,
                    filters,
                    metrics,
                    delivery_arbiter,
                    health,
                    tls,
                )
                .sharing(store)
            })
        };
        let webhooks = Webhooks::new(filters, queue.clone(), health);
        let (outlets, outgoing) = crate::bridge::outlets(&config, &metrics);
        let registry = Registry::new(
            room_arbiters.clone(),
            engine.clone(),
            config.clone(),
            metrics.clone(),
            webhooks.clone(),
        )
        .sending_out(outlets)
        .start();
        let routes: Routes = Arc::new(ArcSwap::from_pointee(Default::default()));
        let mut chain = middleware::default_chain(&config.router);
        chain.push(Arc::new(metrics_mod::HandlerTiming(metrics.clone())));
        let router = Router::new(routes.clone(), chain).start();
        let supervisor = Supervisor::new(
            registry.clone(),
            queue,
            config.heartbeat.interval,
            &config.server,
        )
        .start();
        let api_limiter = NonZeroU32::new(config.api.requests_per_second)
            .map(|n| RateLimiter::keyed(Quota::per_second(n)));
        let (bridges, bridges_stop) = BridgeStop::new();
        let asap = crate::asap::AsapState::new(&config.asap);
        let tasks = crate::tasks::TasksState::new(&config.tasks);
        let task_store = match config.tasks.enabled {
            true => Some(crate::tasks::open_store(&config.tasks)?),
            false => None,
        };
        let admission = crate::transport::admission::Admission::new(&config.limits);
        let broker = Broker {
            state: Arc::new(BrokerState {
                config,
                registry,
                routes,
                auth,
                ready: AtomicBool::new(true),
                api_limiter,
                metrics,
                webhooks,
                engine,
                asap,
                tasks,
                admission,
            }),
            router,
            supervisor,
            room_arbiters: Arc::new(room_arbiters),
            webhook_arbiters: Arc::new([outbox_arbiter, delivery_arbiter]),
            bridges: Arc::new(bridges),
        };
        crate::bridge::redis::start(&broker, outgoing, bridges_stop);
        if let Some((writer, reader)) = task_store {
            broker.start_tasks(writer)?;
            let _ = broker.state.tasks.reader.set(reader);
        }
        if broker.config().asap.enabled && broker.config().asap.echo_skill {
            broker.router.do_send(RegisterHandler {
                msg_type: crate::asap::skill_key("echo"),
                recipient: crate::asap::EchoSkill.start().recipient(),
                origins: Origins::ASAP,
                skill: Some(crate::asap::EchoSkill::skill()),
            });
        }
        Ok(broker)
    }

    /// Starts the TaskManager on an arbiter of its own (its start-up and re-reads wait for
    /// the store) and routes the worker protocol's message types to it.
    fn start_tasks(&self, store: crate::tasks::StoreThread) -> Result<(), ConfigError> {
        let manager = crate::tasks::manager::TaskManager::new(
            store,
            self.config().tasks.clone(),
            self.state.tasks.owners.clone(),
            self.clone(),
        )
        .map_err(|e| ConfigError::Invalid {
            key: "tasks.sqlite_path".into(),
            message: e.to_string(),
        })?;
        let addr = crate::tasks::manager::TaskManager::start_in_arbiter(
            &Arbiter::new().handle(),
            move |_| manager,
        );
        for msg_type in crate::tasks::WORKER_TYPES {
            self.router.do_send(RegisterHandler {
                msg_type: msg_type.to_owned(),
                recipient: addr.clone().recipient(),
                origins: Origins::SOCKET,
                skill: None,
            });
        }
        let _ = self.state.tasks.manager.set(addr);
        Ok(())
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// The broker's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// The engine rooms live in.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.state.engine
    }

    /// Shared state, for the routes in [`crate::http`].
    pub(crate) fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// Mounts the broker: the main WebSocket endpoint (`server.ws_path`), the configured
    /// `[[endpoints]]`, `/healthz`, `/metrics`, the HTTP API, and the conformance echo route
    /// when configured. Use with `App::configure`.
    pub fn configure(&self) -> impl Fn(&mut web::ServiceConfig) + Clone + 'static {
        let broker = self.clone();
        // Checked by `Config::validate` when the broker started.
        let endpoints: Vec<Arc<Endpoint>> = broker
            .config()
            .endpoints
            .iter()
            .filter_map(|e| e.compile().ok().map(Arc::new))
            .collect();
        move |cfg: &mut web::ServiceConfig| {
            let config = broker.config();
            cfg.app_data(web::Data::new(broker.clone()));
            for endpoint in &endpoints {
                cfg.service(endpoint_resource(&broker, endpoint.clone()));
            }
            // An endpoint on `server.ws_path` takes the path over.
            if !endpoints
                .iter()
                .any(|e| e.config.path == config.server.ws_path)
            {
                let plain = Arc::new(Endpoint::plain(&config.server.ws_path));
                cfg.service(endpoint_resource(&broker, plain));
            }
            if config.tasks.enabled {
                // A task's live events for its owner's tabs: protocol v1, so each event
                // carries its seq, with the task's whole history replayed on connect.
                let updates = EndpointConfig::new("/api/agent/{taskId}/updates")
                    .room("task:{taskId}")
                    .replay(config.tasks.history_size);
                if let Ok(endpoint) = updates.compile() {
                    cfg.service(endpoint_resource(&broker, Arc::new(endpoint)));
                }
            }
            if config.asap.enabled {
                let asap = EndpointConfig::new(crate::http::asap::WS_PATH).framing(Framing::Asap);
                // The endpoint has no room template, so it always compiles.
                if let Ok(endpoint) = asap.compile() {
                    cfg.service(endpoint_resource(&broker, Arc::new(endpoint)));
                }
                http::asap::configure(cfg, config.asap.max_request_bytes);
            }
            cfg.service(resource("/healthz", "GET").route(web::get().to(http::health::healthz)))
                .service(resource("/metrics", "GET").route(web::get().to(metrics_mod::endpoint)));
            http::api::configure(cfg, &config.api);
            if !config.conformance.echo_path.is_empty() {
                cfg.service(
                    resource(&config.conformance.echo_path, "GET")
                        .route(web::get().to(http::echo::echo)),
                );
            }
        }
    }

    /// Mounts one more WebSocket endpoint that speaks protocol v1 at `path`
    /// (e.g. `/agents/ws`). Use with `App::configure` next to [`Broker::configure`].
    pub fn websocket_route(
        &self,
        path: &str,
    ) -> impl Fn(&mut web::ServiceConfig) + Clone + 'static {
        let broker = self.clone();
        let endpoint = Arc::new(Endpoint::plain(path));
        move |cfg: &mut web::ServiceConfig| {
            cfg.service(endpoint_resource(&broker, endpoint.clone()));
        }
    }

    /// Mounts a WebSocket endpoint bound to a room, as an `[[endpoints]]` entry would; the
    /// error names the field that is wrong. Use with `App::configure`.
    ///
    /// ```no_run
    /// # fn demo(broker: switchboard::Broker) -> Result<(), switchboard::config::ConfigError> {
    /// use switchboard::endpoint::{EndpointConfig, Framing};
    /// let responses = broker.endpoint(
    ///     EndpointConfig::new("/ws/responses/{command_id}")
    ///         .room("response:{command_id}")
    ///         .framing(Framing::Raw)
    ///         .close_code(1008),
    /// )?;
    /// let app = actix_web::App::new()
    ///     .configure(broker.configure())
    ///     .configure(responses);
    /// # Ok(()) }
    /// ```
    pub fn endpoint(
        &self,
        endpoint: EndpointConfig,
    ) -> Result<impl Fn(&mut web::ServiceConfig) + Clone + 'static, ConfigError> {
        let compiled = endpoint
            .compile()
            .map_err(|(field, message)| ConfigError::Invalid {
                key: format!("endpoint `{}`: {field}", endpoint.path),
                message,
            })?;
        let broker = self.clone();
        let endpoint = Arc::new(compiled);
        Ok(move |cfg: &mut web::ServiceConfig| {
            cfg.service(endpoint_resource(&broker, endpoint.clone()));
        })
    }

    /// Routes requests of `msg_type` to `recipient`; its replies carry `correlation_id`
    /// (or the JSON-RPC `id`).
    pub async fn register_handler(
        &self,
        msg_type: &str,
        recipient: Recipient<HandlerRequest>,
    ) -> Result<(), HandlerError> {
        self.register_handler_on(msg_type, recipient, Origins::SOCKET)
            .await
    }

    /// Routes requests of `msg_type` from the endpoints in `origins` to `recipient`: with
    /// [`Origins::ASAP`], ASAP envelopes whose payload type is `msg_type` (the protocol's own
    /// types under their dotted names, `task.cancel`); with [`Origins::ALL`], v1 clients too.
    /// The request says where it came from ([`HandlerRequest::origin`]).
    pub async fn register_handler_on(
        &self,
        msg_type: &str,
        recipient: Recipient<HandlerRequest>,
        origins: Origins,
    ) -> Result<(), HandlerError> {
        self.register(RegisterHandler {
            msg_type: msg_type.to_owned(),
            recipient,
            origins,
            skill: None,
        })
        .await
    }

    /// Serves an ASAP skill: task requests whose `skill_id` is `skill.id` go to `recipient`,
    /// and the manifest lists the skill. The reply's type and payload become the answering
    /// envelope's (`task.response` with a `TaskResponse` payload, for a task).
    pub async fn register_skill(
        &self,
        skill: Skill,
        recipient: Recipient<HandlerRequest>,
    ) -> Result<(), HandlerError> {
        self.register(RegisterHandler {
            msg_type: crate::asap::skill_key(&skill.id),
            recipient,
            origins: Origins::ASAP,
            skill: Some(skill),
        })
        .await
    }

    async fn register(&self, registration: RegisterHandler) -> Result<(), HandlerError> {
        self.router
            .send(registration)
            .await
            .map_err(|e| HandlerError::new(crate::protocol::ErrorCode::Internal, e.to_string()))?
    }

    /// Appends a middleware to the handler chain.
    pub async fn add_middleware(&self, middleware: Arc<dyn Middleware>) {
        let _ = self.router.send(AddMiddleware(middleware)).await;
    }

    /// Live sessions, users and rooms; an error when the Registry does not answer (the
    /// broker is stopping).
    pub async fn counts(&self) -> Result<Counts, MailboxError> {
        self.state.registry.send(GetCounts).await
    }

    /// Whether the broker's actors answer within `deadline`: the Registry (which returns
    /// the counts) and each arbiter thread (rooms, webhook outbox, webhook deliveries). A
    /// thread blocked by a stuck call or a busy loop fails the check, which `/healthz`
    /// reports as 503.
    pub async fn health(&self, deadline: Duration) -> Result<Counts, String> {
        let arbiters = self
            .room_arbiters
            .iter()
            .map(|a| ("a room arbiter", a))
            .chain([
                ("the webhook outbox arbiter", &self.webhook_arbiters[0]),
                ("the webhook delivery arbiter", &self.webhook_arbiters[1]),
            ]);
        let probes = arbiters.map(|(name, arbiter)| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let started = arbiter.spawn(async move {
                let _ = tx.send(());
            });
            async move {
                if !started {
                    return Err(format!("{name} has stopped"));
                }
                match tokio::time::timeout(deadline, rx).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(format!("{name} dropped the probe")),
                    Err(_) => Err(format!("{name} did not answer within {deadline:?}")),
                }
            }
        });
        let registry = async {
            match tokio::time::timeout(deadline, self.counts()).await {
                Ok(Ok(counts)) => Ok(counts),
                Ok(Err(err)) => Err(format!("the Registry is gone: {err}")),
                Err(_) => Err(format!("the Registry did not answer within {deadline:?}")),
            }
        };
        let (counts, arbiters) =
            futures_util::future::join(registry, futures_util::future::join_all(probes)).await;
        arbiters.into_iter().collect::<Result<Vec<()>, String>>()?;
        counts
    }

    /// Graceful shutdown: `/readyz` answers 503 at once and the broker keeps serving for
    /// `server.drain_delay`; then pause `server`, close every session with 1012, wait for them
    /// (bounded by `server.shutdown_timeout`), let webhook attempts in flight finish (same
    /// bound), stop `server`, stop the room and webhook arbiters.
    pub async fn shutdown(&self, server: Option<ServerHandle>) -> ShutdownReport {
        self.state.ready.store(false, Ordering::Release);
        // Nothing new comes in from Redis; a bridge leader hands its key over at once.
        self.bridges.stop();
        let report = self
            .supervisor
            .send(Shutdown { server })
            .await
            .unwrap_or(ShutdownReport {
                sessions: 0,
                drained: false,
                webhook_attempts: 0,
                webhooks_drained: false,
            });
        for arbiter in self
            .room_arbiters
            .iter()
            .chain(self.webhook_arbiters.iter())
        {
            arbiter.stop();
        }
        report
    }
}
