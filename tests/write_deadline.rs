//! The write deadline: a peer that stops reading while its room is flooded loses its TCP
//! connection (reset) within `limits.write_timeout`, whether the broker gave up on it as a
//! slow consumer (4009, whose close frame can then not be delivered either) or a single
//! write waited out the deadline.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{metric_value, metrics_text, test_config, token, TestBroker, WAIT};
use switchboard::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
const KEY: &str = "write-deadline-api-key-0123456789";
const ROOM: &str = "flood:1";

/// A WebSocket client that completes the handshake, joins [`ROOM`] and then never reads,
/// with a receive buffer as small as the kernel allows.
async fn reader_that_never_reads(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    let token = token("sloth", &["flood:*"]);
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("the handshake answer in time")
            .expect("read");
        assert_eq!(n, 1, "connection closed during the handshake");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // A masked text frame (mask 0: the payload is sent as is).
    let join = json!({"type": "room.join", "id": "j", "room": ROOM}).to_string();
    let mut frame = vec![0x81, 0x80 | join.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(join.as_bytes());
    stream.write_all(&frame).await.expect("join");
    stream
}

/// Waits (bounded) until `room` has `members`.
async fn wait_members(broker: &TestBroker, members: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut resp = awc::Client::new()
            .get(broker.http_url("/api/rooms"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("list rooms");
        let body: serde_json::Value = resp.json().await.expect("JSON");
        let found = body["rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["room"] == ROOM)
            .and_then(|r| r["members"].as_u64())
            .unwrap_or(0);
        if found == members {
            return;
        }
        assert!(Instant::now() < deadline, "room members: {body}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Floods the room through the HTTP API with `count` messages of `size` bytes.
async fn flood(broker: &TestBroker, count: usize, size: usize) {
    let api = awc::Client::new();
    let payload = json!({ "blob": "x".repeat(size) });
    for _ in 0..count {
        let resp = api
            .post(broker.http_url(&format!("/api/rooms/{ROOM}/publish")))
            .bearer_auth(KEY)
            .send_json(&json!({ "payload": payload }))
            .await
            .expect("publish");
        assert_eq!(resp.status(), 200);
    }
}

/// Waits (bounded) for `switchboard_connection_resets_total` with one of `reasons` to reach
/// 1 and returns how long that took.
async fn wait_reset(broker: &TestBroker, reasons: &[&str], since: Instant) -> Duration {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics_text(broker.addr).await;
        let resets: f64 = reasons
            .iter()
            .map(|reason| {
                let series = format!(r#"switchboard_connection_resets_total{{reason="{reason}"}}"#);
                metric_value(&text, &series)
            })
            .sum();
        if resets >= 1.0 {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no reset {reasons:?} within {WAIT:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The reader's socket ends in a reset (not a clean close): reading drains what arrived
/// before the reset and then fails.
async fn assert_reset(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Err("a clean end of stream, not a reset".to_owned()),
                Ok(_) => continue,
                Err(e) => return Ok(e.kind()),
            }
        }
    })
    .await
    .expect("the socket ends in time");
    assert_eq!(outcome, Ok(std::io::ErrorKind::ConnectionReset));
}

fn config(queue_messages: usize, queue_bytes: usize) -> Config {
    let mut config = test_config();
    config.limits.write_timeout = WRITE_TIMEOUT;
    config.limits.outbound_queue_messages = queue_messages;
    config.limits.outbound_queue_bytes = queue_bytes;
    config.api.keys = vec![KEY.into()];
    config.api.requests_per_second = 0;
    config
}

#[actix_rt::test]
async fn a_slow_consumer_that_never_reads_is_reset_within_the_deadline_after_4009() {
    // A small queue: the flood overflows it (4009) long before the kernel's buffers are
    // the limit, and the close frame then waits behind unread data.
    let broker = TestBroker::start(config(64, 1 << 20));
    let reader = reader_that_never_reads(broker.addr).await;
    wait_members(&broker, 1).await;
    flood(&broker, 400, 32 * 1024).await;
    let flooded = Instant::now();
    // The close frame waits behind unread data: either the write in progress at the 4009
    // (a socket the broker owns finishes its frame before the close, so a slow reader still
    // learns why) or the close itself waits out the deadline.
    let took = wait_reset(&broker, &["write_stalled", "close_unfinished"], flooded).await;
    eprintln!("after 4009: reset {took:?} after the flood (write_timeout {WRITE_TIMEOUT:?})");
    assert!(
        took < WRITE_TIMEOUT + Duration::from_secs(3),
        "reset {took:?} after the flood"
    );
    assert_reset(reader).await;
    wait_members(&broker, 0).await;
}

#[actix_rt::test]
async fn a_write_that_waits_out_the_deadline_resets_the_connection() {
    // A queue large enough never to overflow in this test: the writer itself waits on the
    // socket until the deadline.
    let broker = TestBroker::start(config(1 << 20, 1 << 30));
    let reader = reader_that_never_reads(broker.addr).await;
    wait_members(&broker, 1).await;
    flood(&broker, 400, 32 * 1024).await;
    let flooded = Instant::now();
    let took = wait_reset(&broker, &["write_stalled"], flooded).await;
    eprintln!("stalled write: reset {took:?} after the flood (write_timeout {WRITE_TIMEOUT:?})");
    assert!(
        took < WRITE_TIMEOUT + Duration::from_secs(3),
        "reset {took:?} after the flood"
    );
    assert_reset(reader).await;
    wait_members(&broker, 0).await;
    let text = metrics_text(broker.addr).await;
    assert_eq!(
        metric_value(&text, "switchboard_slow_consumer_closes_total"),
        0.0,
        "the queue never overflowed: the deadline did the work"
    );
}
