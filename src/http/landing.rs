//! `GET /` of the `switchboard` binary: a small page that says what this is and links to
//! the API docs, the OpenAPI document, metrics and health. `Broker::configure` does not mount
//! it, so an application that embeds the broker keeps its own `/`.

use actix_web::{web, HttpResponse};

use crate::Broker;

/// The landing page.
pub async fn page(broker: web::Data<Broker>) -> HttpResponse {
    let config = broker.config();
    let ws_path = html_escape(&config.server.ws_path);
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>switchboard</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}code{{background:#f2f2f2;padding:0 .2em}}</style>
</head>
<body>
<h1>switchboard {version}</h1>
<p>A real-time message broker. Clients connect over WebSocket at <code>{ws_path}</code> (protocol
<code>switchboard.v1</code>); backends publish over the HTTP API.</p>
<ul>
<li><a href="/api/docs/">API docs</a>: every HTTP route, to read and to try</li>
<li><a href="/api/openapi.json">OpenAPI document</a></li>
{console}<li><a href="/metrics">Metrics</a> (Prometheus)</li>
<li><a href="/healthz">Health</a> and <a href="/readyz">readiness</a></li>
</ul>
<p>The protocol, the HTTP API, webhooks and security are described in the <code>docs/</code>
folder of the source: <code>PROTOCOL.md</code>, <code>HTTP_API.md</code>,
<code>WEBHOOKS.md</code>, <code>SECURITY.md</code>.</p>
</body>
</html>
"#,
        version = env!("CARGO_PKG_VERSION"),
        console = if config.console.enabled {
            "<li><a href=\"/console/\">Console</a>: rooms, live messages, sessions, webhooks, metrics</li>\n"
        } else {
            ""
        },
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html)
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
