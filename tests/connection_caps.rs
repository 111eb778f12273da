//! Connection caps, answered before the upgrade: `limits.max_connections` (503),
//! `limits.max_connections_per_ip` and `limits.handshakes_per_second_per_ip` (429), and a
//! handshake whose headers never finish (slowloris), cut after
//! `limits.request_header_timeout`.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{metric_value, metrics_text, test_config, token, Client, TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A WebSocket handshake over a raw socket: the response head (status line and headers).
async fn raw_handshake(addr: SocketAddr, token: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response in time");
    String::from_utf8_lossy(&head).into_owned()
}

fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

#[actix_rt::test]
async fn the_global_cap_answers_503_and_a_closed_connection_frees_its_place() {
    let mut config = test_config();
    config.limits.max_connections = 2;
    let broker = TestBroker::start(config);
    let first = broker.client("a", &["*"]).await;
    let _second = broker.client("b", &["*"]).await;

    let head = raw_handshake(broker.addr, &token("c", &["*"])).await;
    assert_eq!(status(&head), 503, "{head}");
    let text = metrics_text(broker.addr).await;
    assert_eq!(
        metric_value(
            &text,
            r#"switchboard_connections_refused_total{reason="max_connections"}"#
        ),
        1.0
    );

    // The place comes back when the session has ended (asynchronously after the close).
    first.close().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let head = raw_handshake(broker.addr, &token("c", &["*"])).await;
        if status(&head) == 101 {
            break;
        }
        assert_eq!(status(&head), 503, "{head}");
        assert!(Instant::now() < deadline, "the place never came back");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn one_address_over_its_share_gets_429_others_are_unaffected() {
    let mut config = test_config();
    config.limits.max_connections_per_ip = 2;
    let broker = TestBroker::start(config);
    let _a = broker.client("a", &["*"]).await;
    let _b = broker.client("b", &["*"]).await;
    let head = raw_handshake(broker.addr, &token("c", &["*"])).await;
    assert_eq!(status(&head), 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    // The refusal is before authentication: a bad token gets the same answer, not 401.
    let head = raw_handshake(broker.addr, "not-a-token").await;
    assert_eq!(status(&head), 429, "{head}");
    let text = metrics_text(broker.addr).await;
    assert_eq!(
        metric_value(
            &text,
            r#"switchboard_connections_refused_total{reason="max_connections_per_ip"}"#
        ),
        2.0
    );
    // Plain HTTP from the same address is not a WebSocket connection: not capped.
    let resp = awc::Client::new()
        .get(broker.http_url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
}

#[actix_rt::test]
async fn a_burst_of_handshakes_beyond_the_allowance_gets_429() {
    let mut config = test_config();
    config.limits.handshakes_per_second_per_ip = 1;
    config.limits.handshake_burst_per_ip = 3;
    let broker = TestBroker::start(config);
    let mut open = Vec::new();
    for sub in ["a", "b", "c"] {
        open.push(
            Client::try_connect(awc::Client::new().ws(broker.ws_url(Some(&token(sub, &["*"])))))
                .await
                .expect("within the burst"),
        );
    }
    let head = raw_handshake(broker.addr, &token("d", &["*"])).await;
    assert_eq!(status(&head), 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
}

#[actix_rt::test]
async fn headers_that_never_finish_are_cut_after_the_deadline() {
    let mut config = test_config();
    config.limits.request_header_timeout = Duration::from_millis(500);
    let broker = TestBroker::start(config);
    let mut stream = tokio::net::TcpStream::connect(broker.addr)
        .await
        .expect("connect");
    let started = Instant::now();
    // Half a handshake, then nothing: the connection must not stay open.
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the broker closed the connection in time")
        .expect("read until closed");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[test]
fn a_header_timeout_below_100ms_is_refused_with_its_key() {
    let mut config = test_config();
    config.limits.request_header_timeout = Duration::ZERO;
    let err = config.validate().expect_err("zero disables the timeout");
    assert!(
        err.to_string().contains("limits.request_header_timeout"),
        "{err}"
    );
}
