//! permessage-deflate (RFC 7692) on the wire: negotiation, compressed frames both ways,
//! fragmented compressed messages, and the errors a compressed frame can carry. Frames are
//! written and read by hand (`support::raw`), deflated and inflated here with flate2.

use crate::support::{self, raw::RawWs, raw::ServerFrame};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use support::{test_config, token, TestBroker};

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const AGREED: &str =
    "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn broker(deflate: bool) -> TestBroker {
    let mut config = test_config();
    config.server.permessage_deflate = deflate;
    TestBroker::start(config)
}

/// A raw message deflated as RFC 7692 asks (no trailing empty block).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    compressor
        .compress_vec(data, &mut out, FlushCompress::Sync)
        .expect("deflate");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut decompressor = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(data.len() * 20 + 1024);
    decompressor
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("inflate");
    out
}

/// A masked client frame with RSV1 set (a compressed message's first frame) or not.
fn frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = RawWs::header(fin, opcode, payload.len() as u64);
    if rsv1 {
        bytes[0] |= 0x40;
    }
    bytes.extend_from_slice(payload);
    bytes
}

/// The next JSON message and whether it came compressed.
fn read_json(ws: &mut RawWs) -> (Value, bool) {
    loop {
        let frame: ServerFrame = ws.read_frame().expect("a frame");
        if frame.opcode != 1 {
            continue;
        }
        let text = if frame.rsv1 {
            inflate(&frame.payload)
        } else {
            frame.payload
        };
        return (serde_json::from_slice(&text).expect("JSON"), frame.rsv1);
    }
}

fn connect(broker: &TestBroker, sub: &str, offer: Option<&str>) -> (RawWs, String) {
    let path = format!("/ws?token={}", token(sub, &["r"]));
    let headers: Vec<(&str, &str)> = offer
        .map(|o| vec![("Sec-WebSocket-Extensions", o)])
        .unwrap_or_default();
    let (mut ws, head) = RawWs::connect(broker.addr, &path, &headers);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (established, _) = read_json(&mut ws);
    assert_eq!(established["type"], "system.connection.established");
    (ws, head.to_ascii_lowercase())
}

#[actix_rt::test]
async fn compressed_messages_both_ways_and_plain_ones_for_clients_that_do_not_offer() {
    let broker = broker(true);
    let (mut ws, head) = connect(&broker, "alice", Some(OFFER));
    assert!(head.contains(AGREED), "{head}");

    // A compressed join, then a compressed publish of a large payload split over two
    // fragments (RSV1 on the first only).
    let join = json!({"type": "room.join", "room": "r", "id": "j1"}).to_string();
    assert!(ws.send_raw(&frame(true, true, 1, &deflate(join.as_bytes()))));
    let (joined, _) = read_json(&mut ws);
    assert_eq!(joined["type"], "room.joined");
    assert_eq!(joined["correlation_id"], "j1");
    let text = "switchboard ".repeat(200);
    let publish =
        json!({"type": "room.publish", "room": "r", "id": "p1", "payload": {"text": text}})
            .to_string();
    let compressed = deflate(publish.as_bytes());
    let (first, rest) = compressed.split_at(compressed.len() / 2);
    assert!(ws.send_raw(&frame(false, true, 1, first)));
    assert!(ws.send_raw(&frame(true, false, 0, rest)));
    let mut message = None;
    while message.is_none() {
        let (msg, was_compressed) = read_json(&mut ws);
        if msg["type"] == "room.message" {
            assert!(was_compressed, "a 2.4 KB message goes compressed");
            message = Some(msg);
        }
    }
    assert_eq!(message.unwrap()["payload"]["text"], text);

    // A client that did not offer it gets plain frames of the same message.
    let (mut plain, head) = connect(&broker, "bob", None);
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    plain.send_text(&json!({"type": "room.join", "room": "r", "id": "j2"}).to_string());
    let (joined, _) = read_json(&mut plain);
    assert_eq!(joined["type"], "room.joined");
    let again = publish.replace("\"p1\"", "\"p2\"");
    assert!(ws.send_raw(&frame(true, true, 1, &deflate(again.as_bytes()))));
    loop {
        let frame = plain.read_frame().expect("a frame");
        assert!(!frame.rsv1, "no compression without the extension");
        if frame.opcode == 1 && frame.text().contains("room.message") {
            break;
        }
    }
}

#[actix_rt::test]
async fn off_by_default_and_bad_compressed_frames_fail_the_connection() {
    // Not configured: the offer is ignored, and RSV1 is a protocol error as before.
    let off = broker(false);
    let (mut ws, head) = connect(&off, "carol", Some(OFFER));
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    assert!(ws.send_raw(&frame(true, true, 1, &deflate(b"{}"))));
    assert_eq!(ws.expect_close().0, Some(1002));

    let on = broker(true);
    // Compressed text that inflates to invalid UTF-8: 1007.
    let (mut ws, _) = connect(&on, "dave", Some(OFFER));
    assert!(ws.send_raw(&frame(true, true, 1, &deflate(&[0xff, 0xfe, 0xfd]))));
    assert_eq!(ws.expect_close().0, Some(1007));
    // RSV1 on a continuation frame: 1002.
    let (mut ws, _) = connect(&on, "erin", Some(OFFER));
    assert!(ws.send_raw(&frame(false, false, 1, b"{\"type\":")));
    assert!(ws.send_raw(&frame(true, true, 0, b"\"x\"}")));
    assert_eq!(ws.expect_close().0, Some(1002));
    // RSV1 on a control frame: 1002.
    let (mut ws, _) = connect(&on, "fay", Some(OFFER));
    assert!(ws.send_raw(&frame(true, true, 9, b"")));
    assert_eq!(ws.expect_close().0, Some(1002));
    // A message that inflates past limits.max_frame_bytes: 1009.
    let (mut ws, _) = connect(&on, "gus", Some(OFFER));
    let bomb = deflate(&vec![b' '; test_config().limits.max_frame_bytes + 1]);
    assert!(ws.send_raw(&frame(true, true, 1, &bomb)));
    assert_eq!(ws.expect_close().0, Some(1009));
}
