//! The web console's routes against a real broker: `/console/` only when `[console]
//! enabled`, its files with their headers, `settings.json`; `GET /api/sessions`, which the
//! console's session list reads; and `switchboard token --admin`, which mints its login.

use crate::support;

use std::process::Command;

use awc::http::StatusCode;
use serde_json::Value;
use support::{test_config, token, Client, TestBroker};
use switchboard::Config;

const KEY: &str = "console-api-key-0123456789";

fn console_config() -> Config {
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    config.console.enabled = true;
    config
}

/// A GET (or another method) with optional headers: status, headers, body.
async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, awc::http::header::HeaderMap, Vec<u8>) {
    let client = awc::Client::builder().disable_redirects().finish();
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        other => panic!("{other}"),
    };
    for header in headers {
        req = req.insert_header(*header);
    }
    let mut resp = req.send().await.expect("request");
    let body = resp.body().limit(1 << 22).await.expect("body").to_vec();
    (resp.status(), resp.headers().clone(), body)
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("JSON body: {body:?}"))
}

#[test]
fn dev_mode_turns_the_console_on_and_a_config_file_leaves_it_off() {
    assert!(Config::dev().console.enabled);
    assert!(!Config::default().console.enabled);
}

#[actix_rt::test]
async fn the_console_is_not_served_unless_enabled() {
    let broker = TestBroker::start(test_config());
    let (status, _, _) = request("GET", &broker.http_url("/console/"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = request("GET", &broker.http_url("/console/console.js"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    broker.shutdown().await;
}

#[actix_rt::test]
async fn the_console_serves_its_embedded_files_with_safe_headers() {
    let broker = TestBroker::start(console_config());

    let (status, headers, _) = request("GET", &broker.http_url("/console"), &[]).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers.get("location").unwrap(), "/console/");

    // The page needs no credential: it holds no data.
    let (status, headers, body) = request("GET", &broker.http_url("/console/"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("content-type").unwrap(),
        "text/html; charset=utf-8"
    );
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("<switchboard-status"), "{html}");
    assert!(html.contains("console.js"), "{html}");
    let csp = headers
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers.get("x-content-type-options").unwrap(), "nosniff");

    let (status, headers, body) =
        request("GET", &broker.http_url("/console/console.js"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("javascript"));
    // The bundle is the client package's code: it speaks protocol v1.
    assert!(String::from_utf8_lossy(&body).contains("system.connection.resume"));

    // Revalidation: the same ETag gets 304 without a body.
    let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
    let (status, _, body) = request(
        "GET",
        &broker.http_url("/console/console.js"),
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    let (status, _, _) = request(
        "GET",
        &broker.http_url("/console/console.js"),
        &[("If-None-Match", "\"something-else\"")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, body) = request("GET", &broker.http_url("/console/nope.js"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"]["code"], "not_found");
    // No way out of the bundle.
    let (status, _, _) = request(
        "GET",
        &broker.http_url("/console/..%2f..%2fCargo.toml"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, headers, body) = request("POST", &broker.http_url("/console/"), &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get("allow").unwrap(), "GET");
    assert_eq!(json(&body)["error"]["code"], "method_not_allowed");

    let (status, _, body) = request("GET", &broker.http_url("/console/settings.json"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["ws_path"], "/ws");

    // The landing page links to it.
    let (_, _, body) = request("GET", &broker.http_url("/"), &[]).await;
    assert!(String::from_utf8_lossy(&body).contains("href=\"/console/\""));
    broker.shutdown().await;
}

async fn sessions(broker: &TestBroker, query: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    let url = broker.http_url(&format!("/api/sessions{query}"));
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let (status, _, body) = request("GET", &url, &headers).await;
    (status, json(&body))
}

/// Polls the list until `done` holds (sessions register as their socket comes up).
async fn sessions_until(broker: &TestBroker, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let (status, body) = sessions(broker, "", Some(KEY)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting; last list: {body}"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn the_session_list_names_each_live_session_and_needs_the_api_credential() {
    let broker = TestBroker::start(console_config());

    let (status, body) = sessions(&broker, "", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = sessions(&broker, "", Some(&token("alice", &["*"]))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let (status, body) = sessions(&broker, "", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, serde_json::json!({"total": 0, "sessions": []}));

    let mut alice = Client::connect(&broker.ws_url(Some(&token("alice", &["*"])))).await;
    let alice_id = alice.recv_type("system.connection.established").await["payload"]
        ["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut bob = Client::connect(&broker.ws_url(Some(&token("bob", &["*"])))).await;
    let bob_id = bob.recv_type("system.connection.established").await["payload"]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let body = sessions_until(&broker, |b| b["total"] == 2).await;
    let listed: Vec<(&str, &str)> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["connection_id"].as_str().unwrap(),
                s["user"].as_str().unwrap(),
            )
        })
        .collect();
    // Oldest first.
    assert_eq!(
        listed,
        vec![(alice_id.as_str(), "alice"), (bob_id.as_str(), "bob")]
    );
    let connected_at = body["sessions"][0]["connected_at"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(connected_at).is_ok(),
        "{connected_at}"
    );

    let (_, body) = sessions(&broker, "?user=bob", Some(KEY)).await;
    assert_eq!(body["total"], 1);
    assert_eq!(body["sessions"][0]["connection_id"], bob_id.as_str());
    let (_, body) = sessions(&broker, "?limit=1", Some(KEY)).await;
    assert_eq!(body["total"], 2);
    assert_eq!(body["sessions"].as_array().unwrap().len(), 1);

    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?nope=1"] {
        let (status, body) = sessions(&broker, bad, Some(KEY)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}");
    }

    // A disconnected session leaves the list.
    let (status, _, _) = request(
        "DELETE",
        &broker.http_url(&format!("/api/sessions/{alice_id}")),
        &[("Authorization", &format!("Bearer {KEY}"))],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    alice.expect_close().await;
    let left = sessions_until(&broker, |b| b["total"] == 1).await;
    assert_eq!(left["sessions"][0]["connection_id"], bob_id.as_str());
    bob.close().await;
    broker.shutdown().await;
}

#[actix_rt::test]
async fn token_admin_mints_a_token_the_api_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(
        &path,
        format!("[auth]\nhs256_secret = \"{}\"\n", support::SECRET),
    )
    .unwrap();
    let mint = |admin: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args(["token", "--config", path.to_str().unwrap(), "--sub", "ops"]);
        cmd.args(["--room", "*"]);
        if admin {
            cmd.arg("--admin");
        }
        for (var, _) in std::env::vars() {
            if var.starts_with("SWITCHBOARD_") {
                cmd.env_remove(var);
            }
        }
        let out = cmd.output().expect("run switchboard token");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let broker = TestBroker::start(console_config());
    let (status, body) = sessions(&broker, "", Some(&mint(true))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = sessions(&broker, "", Some(&mint(false))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    broker.shutdown().await;
}
