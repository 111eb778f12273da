//! Raw sockets for tests where the bytes on the wire matter: a blocking WebSocket client that
//! writes frames by hand (any header, any length, no payload at all), and raw HTTP/1.1.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a read may block before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A frame from the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerFrame {
    /// FIN bit.
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate).
    pub rsv1: bool,
    /// Opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The payload as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A WebSocket client on a plain TCP socket.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// The status code and head of an HTTP response.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl RawWs {
    /// Opens `path` (with its query) with the given extra header lines; returns the socket
    /// and the response head. The socket is only usable when the head says 101.
    pub fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (RawWs, String) {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request.push_str(&format!("Host: {addr}\r\n"));
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .expect("send handshake");
        let mut ws = RawWs {
            stream,
            buf: Vec::new(),
        };
        let head = ws.read_head();
        (ws, head)
    }

    fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            if self.fill() == 0 {
                return String::from_utf8_lossy(&self.buf).into_owned();
            }
        }
    }

    /// Reads more bytes into the buffer; 0 at end of stream.
    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("nothing from the server within {READ_TIMEOUT:?}")
            }
            Err(_) => 0,
        }
    }

    /// The header of a masked client frame.
    pub fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        // An all-zero mask leaves the payload as written.
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    }

    /// Writes raw bytes; false once the server has closed the connection.
    pub fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Writes one whole frame.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> bool {
        let mut frame = Self::header(fin, opcode, payload.len() as u64);
        frame.extend_from_slice(payload);
        self.send_raw(&frame)
    }

    /// Writes a text frame.
    pub fn send_text(&mut self, text: &str) -> bool {
        self.send_frame(true, 1, text.as_bytes())
    }

    /// The next frame; `None` at end of stream.
    pub fn read_frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    /// The next text frame, skipping pings.
    pub fn read_text(&mut self) -> String {
        loop {
            let frame = self
                .read_frame()
                .expect("a frame before the end of the stream");
            match frame.opcode {
                1 => return frame.text(),
                9 | 10 => continue,
                _ => panic!("expected a text frame, got {frame:?}"),
            }
        }
    }

    /// The next JSON text message.
    pub fn read_json(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.read_text()).expect("the server sends JSON")
    }

    /// Reads until a close frame; its code and reason.
    pub fn expect_close(&mut self) -> (Option<u16>, String) {
        loop {
            match self.read_frame() {
                Some(frame) if frame.opcode == 8 => {
                    let reason =
                        String::from_utf8_lossy(frame.payload.get(2..).unwrap_or(&[])).into_owned();
                    return (frame.close_code(), reason);
                }
                Some(_) => continue,
                None => return (None, String::new()),
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv1 = buf[0] & 0x40 != 0;
    let opcode = buf[0] & 0x0f;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        at += 4; // servers do not mask, but tolerate it
    }
    if buf.len() < at + len {
        return None;
    }
    let payload = buf[at..at + len].to_vec();
    Some((
        ServerFrame {
            fin,
            rsv1,
            opcode,
            payload,
        },
        at + len,
    ))
}

/// A raw HTTP/1.1 connection (keep-alive, requests written by hand).
pub struct RawHttp {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response read by [`RawHttp::read_response`].
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// The head (status line and headers): no test reads it, failure messages show it
    /// (`{response:?}`), which dead-code analysis does not count.
    #[allow(dead_code)]
    pub head: String,
    /// The body (Content-Length bodies only).
    pub body: String,
}

impl RawHttp {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> RawHttp {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        RawHttp {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes; false once the server has closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// A second handle on the same connection (to write from another thread).
    pub fn try_clone(&self) -> RawHttp {
        RawHttp {
            stream: self.stream.try_clone().expect("clone the socket"),
            buf: Vec::new(),
        }
    }

    /// `GET path` on this connection (keep-alive).
    pub fn get(&mut self, path: &str) -> Option<RawResponse> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        if !self.send(request.as_bytes()) {
            return None;
        }
        self.read_response()
    }

    /// The next response; `None` when the server closed the connection first.
    pub fn read_response(&mut self) -> Option<RawResponse> {
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < length {
            if !self.fill() {
                return None;
            }
        }
        let body = String::from_utf8_lossy(&self.buf[..length]).into_owned();
        self.buf.drain(..length);
        Some(RawResponse {
            status: status_of(&head),
            head,
            body,
        })
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("no response within {READ_TIMEOUT:?}")
            }
            Err(_) => false,
        }
    }
}
