//! Running the broker as a server: bind, serve, shut down gracefully.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests start a real
//! broker on `127.0.0.1:0` and end it without signals; the binary passes SIGINT/SIGTERM.
//! With `[server] tls_cert` and `tls_key` the listener speaks TLS ([`serve_with_tls`]
//! takes the certificate, so its owner can reload it).

/// For `HttpServer::on_connect` in an application that embeds the broker: keeps what the
/// write deadline (`limits.write_timeout`) needs to reset the TCP connection of a peer that
/// stops reading. Without it the broker works, but such a connection stays until the kernel
/// drops it.
pub use crate::transport::socket::on_connect;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_service::{map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::{fn_service, AppConfig};
use actix_web::App;

use crate::actors::supervisor::ShutdownReport;
use crate::config::Config;
use crate::tls::TlsCertificate;
use crate::Broker;

/// Serves `broker` on `listener` until `shutdown` resolves or the server stops, then closes
/// every session (1012) and stops. Must run inside an actix system. With `[server]
/// tls_cert` and `tls_key` set, it reads them and speaks TLS (an unusable file is an
/// error before anything is served).
pub async fn serve(
    broker: Broker,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<ShutdownReport> {
    let tls =
        TlsCertificate::from_config(&broker.config().server).map_err(std::io::Error::other)?;
    serve_with_tls(broker, listener, tls, shutdown).await
}

/// [`serve`] with the certificate given: `Some` speaks TLS with it (keep a clone to
/// [`TlsCertificate::reload`] it), `None` plain HTTP, whatever the config says.
pub async fn serve_with_tls(
    broker: Broker,
    listener: TcpListener,
    tls: Option<Arc<TlsCertificate>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<ShutdownReport> {
    let configure = broker.configure();
    let workers = match broker.config().server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let console = broker.config().console.enabled;
    let header_timeout = broker.config().limits.request_header_timeout;
    let app = move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(crate::metrics::track_http))
            .configure(configure.clone())
            // The binary's own front page; embedders keep their `/`.
            .service(
                crate::http::error::resource("/", "GET")
                    .route(actix_web::web::get().to(crate::http::landing::page)),
            )
            .configure(|cfg| {
                if console {
                    crate::http::console::configure(cfg);
                }
            })
    };
    let addr = listener.local_addr()?;
    // Not `HttpServer`: the service is built by hand so that WebSocket upgrades go to the
    // takeover handler (transport::takeover), which serves them through the same App and
    // then owns the socket without the dispatcher's buffers; and so that TLS offers only
    // HTTP/1.1 (`listen_rustls_0_23` would put `h2` first in ALPN, and a client offering
    // both would get HTTP/2, where a WebSocket cannot upgrade).
    macro_rules! http_service {
        ($secure:expr) => {{
            let secure = $secure;
            let config = move |_| {
                // What HttpServer gives an App: `secure` makes the connection's scheme
                // https. (`__priv_test_new` is AppConfig's only public constructor;
                // actix-test builds on it too.)
                AppConfig::__priv_test_new(secure, addr.to_string(), addr)
            };
            let factory = || {
                map_config(
                    app()
                        .into_factory()
                        .map_err(|err: actix_web::Error| err.error_response()),
                    config,
                )
            };
            let upgrade = crate::transport::takeover::upgrade_service(map_config(
                app().into_factory(),
                config,
            ));
            let builder = actix_http::HttpService::build()
                // Drop TCP as soon as an HTTP exchange is done (the default lingers 1 s).
                .client_disconnect_timeout(Duration::ZERO)
                // A client that never finishes its headers (slowloris) gets 408 and is
                // closed.
                .client_request_timeout(header_timeout)
                .local_addr(addr);
            let builder = if secure { builder.secure() } else { builder };
            builder.upgrade(upgrade).h1(factory())
        }};
    }
    let builder = actix_web::dev::Server::build()
        .workers(workers)
        .disable_signals()
        // Sessions are drained by the Supervisor first; this only bounds plain HTTP.
        .shutdown_timeout(1);
    let server = match tls {
        None => builder
            .listen("switchboard", listener, move || {
                nodelay().and_then(http_service!(false).tcp())
            })?
            .run(),
        Some(certificate) => {
            let tls_config = certificate.server_config().map_err(std::io::Error::other)?;
            builder
                .listen("switchboard-tls", listener, move || {
                    nodelay().and_then(http_service!(true).rustls_0_23(tls_config.clone()))
                })?
                .run()
        }
    };
    let handle = server.handle();
    let mut running = actix_rt::spawn(server);
    tokio::select! {
        _ = shutdown => {}
        result = &mut running => {
            log::warn!("server stopped on its own: {result:?}");
        }
    }
    let report = broker.shutdown(Some(handle)).await;
    let _ = running.await;
    Ok(report)
}

/// Sets `TCP_NODELAY` on each accepted connection: small frames go out at once. Without it
/// Nagle holds frames behind a delayed ACK (25-40 ms stalls after every ping/pong exchange,
/// see docs/PERFORMANCE.md).
fn nodelay<E>() -> impl actix_service::ServiceFactory<
    actix_rt::net::TcpStream,
    Config = (),
    Response = actix_rt::net::TcpStream,
    Error = E,
    InitError = (),
> {
    fn_service(|io: actix_rt::net::TcpStream| async move {
        let _ = io.set_nodelay(true);
        Ok(io)
    })
}

/// What the binary prints at start: the version, the engine and every URL that is on.
pub fn banner(config: &Config, addr: SocketAddr) -> String {
    let tls = !config.server.tls_cert.is_empty();
    let (http, ws) = if tls {
        (format!("https://{addr}"), format!("wss://{addr}"))
    } else {
        (format!("http://{addr}"), format!("ws://{addr}"))
    };
    let engine = match config.engine.kind {
        crate::config::EngineKind::Memory => "memory".to_owned(),
        crate::config::EngineKind::Redis => format!(
            "redis at {}, prefix {}",
            without_password(&config.redis.url),
            config.redis.prefix
        ),
    };
    let mut lines = vec![format!(
        "switchboard {} listening on {addr} (engine: {engine}{})",
        env!("CARGO_PKG_VERSION"),
        if config.dev_mode { ", dev mode" } else { "" }
    )];
    lines.push(format!("  home       {http}/"));
    if tls {
        lines.push(format!(
            "  TLS        {} (SIGHUP reloads it)",
            config.server.tls_cert
        ));
    }
    if !config
        .endpoints
        .iter()
        .any(|e| e.path == config.server.ws_path)
    {
        lines.push(format!("  WebSocket  {ws}{}", config.server.ws_path));
    }
    for endpoint in &config.endpoints {
        let room = if endpoint.room.is_empty() {
            String::new()
        } else {
            format!(" -> {}", endpoint.room)
        };
        let framing = match endpoint.framing {
            crate::endpoint::Framing::V1 => "v1",
            crate::endpoint::Framing::Raw => "raw",
            crate::endpoint::Framing::Asap => "asap",
        };
        lines.push(format!(
            "  endpoint   {ws}{}{room} ({framing})",
            endpoint.path
        ));
    }
    if config.asap.enabled {
        lines.push(format!(
            "  ASAP       {ws}{} and POST /asap as {}{}",
            crate::http::asap::WS_PATH,
            config.asap.agent_id,
            if config.asap.echo_skill {
                " (echo skill on)"
            } else {
                ""
            }
        ));
    }
    for (i, bridge) in config.bridge.redis.iter().enumerate() {
        lines.push(format!(
            "  bridge     {}: Redis {} {:?} -> rooms{}",
            bridge.name_or(i),
            without_password(bridge.url_or(&config.redis)),
            bridge.channels,
            if bridge.publish_rooms.is_empty() {
                String::new()
            } else {
                format!(", rooms {:?} -> Redis", bridge.publish_rooms)
            }
        ));
    }
    let api_note = if config.api.keys.is_empty() {
        " (no api.keys: admin tokens only)"
    } else {
        ""
    };
    lines.push(format!("  HTTP API   {http}/api{api_note}"));
    lines.push(format!("  OpenAPI    {http}/api/openapi.json"));
    lines.push(format!("  API docs   {http}/api/docs/"));
    if config.console.enabled {
        lines.push(format!(
            "  console    {http}{} (an API key or admin token)",
            crate::http::console::PATH
        ));
    }
    lines.push(format!("  metrics    {http}/metrics"));
    lines.push(format!("  health     {http}/healthz  {http}/readyz"));
    if !config.conformance.echo_path.is_empty() {
        lines.push(format!(
            "  echo       {ws}{} (conformance)",
            config.conformance.echo_path
        ));
    }
    let outbox = &config.webhooks.outbox_path;
    lines.push(if outbox.is_empty() {
        "  webhooks   outbox in memory (pending deliveries do not survive a restart)".to_owned()
    } else {
        let path = std::path::absolute(outbox).unwrap_or_else(|_| outbox.into());
        format!("  webhooks   outbox {}", path.display())
    });
    lines.push("  logging    RUST_LOG=debug shows connections and joins".to_owned());
    lines.join("\n")
}

/// A Redis URL fit for a log: the password, if any, replaced by `***`.
fn without_password(redis_url: &str) -> String {
    match url::Url::parse(redis_url) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_names_the_engine_without_the_redis_password() {
        let addr: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let mut config = Config::default();
        assert!(banner(&config, addr).contains("(engine: memory)"));
        config.engine.kind = crate::config::EngineKind::Redis;
        config.redis.url = "redis://app:hunter2@10.0.0.5:6379/0".into();
        let text = banner(&config, addr);
        assert!(
            text.contains("engine: redis at redis://app:***@10.0.0.5:6379/0, prefix switchboard"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn the_banner_gives_https_and_wss_urls_with_tls() {
        let addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let mut config = Config::default();
        let plain = banner(&config, addr);
        assert!(plain.contains("ws://127.0.0.1:8443/ws"), "{plain}");
        assert!(
            !plain.contains("https://") && !plain.contains("wss://"),
            "{plain}"
        );
        config.server.tls_cert = "/etc/switchboard/cert.pem".into();
        config.server.tls_key = "/etc/switchboard/key.pem".into();
        let text = banner(&config, addr);
        assert!(text.contains("wss://127.0.0.1:8443/ws"), "{text}");
        assert!(text.contains("https://127.0.0.1:8443/healthz"), "{text}");
        assert!(text.contains("/etc/switchboard/cert.pem"), "{text}");
        assert!(
            !text.contains("http://") && !text.contains("ws://"),
            "{text}"
        );
    }
}
