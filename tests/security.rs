//! Regression tests for what an adversarial run found (docs/SECURITY.md): each test attacks
//! the broker the way the finding describes, mostly on raw sockets where the bytes on the
//! wire matter, and fails on a broker without the fix.

#[path = "support/process.rs"]
mod process;
#[path = "support/raw.rs"]
mod raw;
mod support;

use process::{free_port, BrokerProcess};
use raw::RawWs;
use support::{test_config, token, TestBroker};
use switchboard::protocol::close;

/// 1 GiB: far more than any limit, and than the test could ever send.
const GIB: u64 = 1 << 30;

fn ws_path(sub: &str, rooms: &[&str]) -> String {
    format!("/ws?token={}", token(sub, rooms))
}

/// Opens an authenticated raw socket and reads `system.connection.established`.
fn raw_client(broker: &TestBroker, sub: &str, rooms: &[&str]) -> RawWs {
    let (mut ws, head) = RawWs::connect(broker.addr, &ws_path(sub, rooms), &[]);
    assert_eq!(raw::status_of(&head), 101, "{head}");
    assert_eq!(ws.read_json()["type"], "system.connection.established");
    ws
}

// ---- 1. an oversized frame is refused at its header ----

#[test]
fn an_oversized_frame_is_refused_at_its_header_before_any_payload() {
    let broker = TestBroker::start(test_config());
    for declared in [GIB, (1 << 63) - 1] {
        let mut ws = raw_client(&broker, "a", &[]);
        // A good message and, in the same write, a header declaring far too much.
        let ping = br#"{"type":"system.ping","id":"before-it"}"#;
        let mut bytes = RawWs::header(true, 1, ping.len() as u64);
        bytes.extend_from_slice(ping);
        bytes.extend(RawWs::header(true, 2, declared));
        assert!(ws.send_raw(&bytes));
        let pong = ws.read_json();
        assert_eq!(pong["correlation_id"], "before-it", "{pong}");
        // Not one byte of the payload was sent: the close must come from the header alone.
        let (code, reason) = ws.expect_close();
        assert_eq!(
            code,
            Some(close::MESSAGE_TOO_BIG),
            "declared {declared}: {reason}"
        );
    }
}

#[test]
fn a_fragmented_message_is_refused_when_its_running_total_passes_the_limit() {
    let mut config = test_config();
    config.limits.max_frame_bytes = 64 * 1024;
    let broker = TestBroker::start(config);
    let mut ws = raw_client(&broker, "a", &[]);
    // 40 KiB first fragment, then a continuation declaring 40 KiB more: 80 KiB > 64 KiB.
    assert!(ws.send_frame(false, 1, &vec![b' '; 40 * 1024]));
    assert!(ws.send_raw(&RawWs::header(true, 0, 40 * 1024)));
    let (code, _) = ws.expect_close();
    assert_eq!(code, Some(close::MESSAGE_TOO_BIG));
}

#[test]
fn the_echo_route_refuses_an_oversized_header_too() {
    let mut config = test_config();
    config.conformance.echo_path = "/echo".into();
    config.conformance.echo_max_message_bytes = 64 * 1024;
    let broker = TestBroker::start(config);
    let (mut ws, head) = RawWs::connect(broker.addr, "/echo", &[]);
    assert_eq!(raw::status_of(&head), 101, "{head}");
    assert!(ws.send_text("hello"));
    assert_eq!(ws.read_text(), "hello");
    assert!(ws.send_raw(&RawWs::header(true, 1, GIB)));
    assert_eq!(ws.expect_close().0, Some(close::MESSAGE_TOO_BIG));
}

/// The broker's own process, measured from outside: three sockets each declare a 1 GiB frame
/// and stream 32 MiB of it. Before the fix the broker buffered all of it (+96 MiB RSS).
#[cfg(target_os = "linux")]
#[actix_rt::test]
async fn streaming_an_oversized_frame_does_not_grow_the_broker() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\nworkers = 1\n[auth]\nanonymous = true\n\
             [webhooks]\noutbox_path = \"\"\n"
        ),
    )
    .expect("write the config");
    let mut broker = BrokerProcess::spawn(&config, dir.path().join("broker.log"));
    let base = format!("http://127.0.0.1:{port}");
    broker.wait_ready(&base).await;
    let addr = format!("127.0.0.1:{port}").parse().expect("address");
    let before = broker.rss_kib();
    let streamed = actix_rt::task::spawn_blocking(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut streamed = 0u64;
        for _ in 0..3 {
            let (mut ws, head) = RawWs::connect(addr, "/ws", &[]);
            assert_eq!(raw::status_of(&head), 101, "{head}");
            ws.read_json();
            assert!(ws.send_raw(&RawWs::header(true, 2, GIB)));
            for _ in 0..512 {
                if !ws.send_raw(&chunk) {
                    break; // the broker hung up: nothing more is accepted
                }
                streamed += chunk.len() as u64;
            }
            assert_eq!(ws.expect_close().0, Some(close::MESSAGE_TOO_BIG));
        }
        streamed
    })
    .await
    .expect("the attack ran");
    let after = broker.rss_kib();
    eprintln!(
        "oversized frames: streamed {} MiB, broker RSS {before} KiB -> {after} KiB",
        streamed >> 20
    );
    assert!(
        after < before + 8 * 1024,
        "the broker grew from {before} KiB to {after} KiB"
    );
}
