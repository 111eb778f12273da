//! The four wire protocols the load generator speaks over WebSocket, and one connection.
//!
//! - `switchboard`: protocol v1 (docs/PROTOCOL.md), JSON text frames.
//! - `nats`: the NATS client protocol (CONNECT, SUB, UNSUB, PUB, PING/PONG) in binary
//!   frames. The server may pack many `MSG`s into one frame, or split one across frames, so
//!   inbound bytes are parsed as a stream.
//! - `mqtt`: MQTT 3.1.1, QoS 0 only, subprotocol `mqtt`, binary frames, parsed as a stream.
//! - `nodews`: the tiny JSON protocol of `scripts/bench/node/server.js`
//!   (`join`/`leave`/`pub` in, `joined`/`left`/`msg`/`ping` out).

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Errors are reported, never matched on.
pub type Error = Box<dyn std::error::Error>;

/// Which broker is on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// switchboard, protocol v1.
    Switchboard,
    /// nats-server's websocket listener.
    Nats,
    /// Mosquitto's websockets listener (MQTT 3.1.1).
    Mqtt,
    /// scripts/bench/node/server.js on npm's `ws`.
    Nodews,
}

impl Target {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Switchboard => "switchboard",
            Target::Nats => "nats",
            Target::Mqtt => "mqtt",
            Target::Nodews => "nodews",
        }
    }

    /// The URL `scripts/bench.sh` starts each broker on.
    pub fn default_url(self) -> &'static str {
        match self {
            Target::Switchboard => "ws://127.0.0.1:18000/ws",
            Target::Nats => "ws://127.0.0.1:18222/",
            Target::Mqtt => "ws://127.0.0.1:18083/mqtt",
            Target::Nodews => "ws://127.0.0.1:18090/",
        }
    }

    /// The room (subject, topic) called `name` in this protocol.
    pub fn room(self, prefix: &str, index: usize) -> String {
        match self {
            Target::Switchboard | Target::Nodews => format!("{prefix}:{index}"),
            Target::Nats => format!("{prefix}.{index}"),
            Target::Mqtt => format!("{prefix}/{index}"),
        }
    }

    fn default_subprotocol(self) -> Option<&'static str> {
        match self {
            Target::Switchboard => Some("switchboard.v1"),
            Target::Mqtt => Some("mqtt"),
            Target::Nats | Target::Nodews => None,
        }
    }

    /// Whether the publisher must be a member of a room to publish to it.
    pub fn publisher_joins(self) -> bool {
        self == Target::Switchboard
    }

    /// A frame publishing `payload` to `room`.
    pub fn publish(self, room: &str, payload: &[u8]) -> Message {
        match self {
            Target::Switchboard => {
                let mut f = Vec::with_capacity(payload.len() + room.len() + 48);
                f.extend_from_slice(b"{\"type\":\"room.publish\",\"room\":\"");
                f.extend_from_slice(room.as_bytes());
                f.extend_from_slice(b"\",\"payload\":");
                f.extend_from_slice(payload);
                f.push(b'}');
                text(f)
            }
            Target::Nodews => {
                let mut f = Vec::with_capacity(payload.len() + room.len() + 32);
                f.extend_from_slice(b"{\"op\":\"pub\",\"room\":\"");
                f.extend_from_slice(room.as_bytes());
                f.extend_from_slice(b"\",\"data\":");
                f.extend_from_slice(payload);
                f.push(b'}');
                text(f)
            }
            Target::Nats => {
                let mut f = format!("PUB {room} {}\r\n", payload.len()).into_bytes();
                f.extend_from_slice(payload);
                f.extend_from_slice(b"\r\n");
                Message::Binary(f.into())
            }
            Target::Mqtt => Message::Binary(mqtt::publish(room, payload).into()),
        }
    }
}

fn text(bytes: Vec<u8>) -> Message {
    Message::Text(
        String::from_utf8(bytes)
            .expect("frames are built from UTF-8")
            .into(),
    )
}

/// What one inbound frame said. Deliveries borrow the frame.
#[derive(Debug)]
pub enum Event<'a> {
    /// A message published to a room we are in; the slice contains its payload.
    Delivery(&'a [u8]),
    /// The connection is ready for joins (established, CONNACK, PONG after CONNECT, …).
    Ready,
    /// A join (SUB, SUBSCRIBE) took effect.
    Joined,
    /// A leave took effect.
    Left,
    /// A pong answering our ping.
    Pong,
    /// An application-level ping that must be answered (the decoder queues the answer).
    Ping,
    /// The server reported an error.
    Error(String),
    /// Anything else (acks, INFO, +OK, …).
    Other,
}

/// Per-connection inbound decoder; queues heartbeat answers in `replies`.
pub struct Decoder {
    target: Target,
    /// Unparsed tail of a stream protocol (NATS, MQTT).
    pending: BytesMut,
    /// Answers to send (pongs).
    pub replies: Vec<Message>,
}

impl Decoder {
    /// A decoder for `target`.
    pub fn new(target: Target) -> Decoder {
        Decoder {
            target,
            pending: BytesMut::new(),
            replies: Vec::new(),
        }
    }

    /// Decodes one WebSocket message, calling `f` for every event in it.
    pub fn feed(&mut self, msg: &Message, f: &mut impl FnMut(Event<'_>)) {
        let data: &[u8] = match msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            _ => return,
        };
        match self.target {
            Target::Switchboard => {
                // One envelope per frame in v1; a batching subprotocol may put several,
                // newline-separated, in one frame (compact JSON never contains a raw newline).
                let mut start = 0;
                let ends = memchr::memchr_iter(b'\n', data).chain(std::iter::once(data.len()));
                for end in ends {
                    let env = &data[start..end];
                    start = end + 1;
                    if env.is_empty() {
                        continue;
                    }
                    let ev = switchboard_event(env);
                    if matches!(ev, Event::Ping) {
                        self.replies
                            .push(Message::Text("{\"type\":\"system.pong\"}".into()));
                    }
                    f(ev);
                }
            }
            Target::Nodews => {
                let ev = nodews_event(data);
                if matches!(ev, Event::Ping) {
                    self.replies.push(Message::Text("{\"op\":\"pong\"}".into()));
                }
                f(ev);
            }
            Target::Nats | Target::Mqtt => {
                if self.pending.is_empty() {
                    let used = self.parse_stream(data, f);
                    if used < data.len() {
                        self.pending.extend_from_slice(&data[used..]);
                    }
                } else {
                    self.pending.extend_from_slice(data);
                    let buf = std::mem::take(&mut self.pending);
                    let used = self.parse_stream(&buf, f);
                    let mut buf = buf;
                    buf.advance(used);
                    self.pending = buf;
                }
            }
        }
    }

    /// Parses complete NATS/MQTT units from `data`; returns how many bytes it consumed.
    fn parse_stream(&mut self, data: &[u8], f: &mut impl FnMut(Event<'_>)) -> usize {
        match self.target {
            Target::Nats => nats::parse(data, &mut self.replies, f),
            Target::Mqtt => mqtt::parse(data, f),
            _ => unreachable!("only stream protocols"),
        }
    }
}

/// The `type` of a switchboard envelope: the fast path reads the leading `{"type":"…"`,
/// anything else is parsed as JSON.
fn switchboard_type(env: &[u8]) -> Cow<'_, str> {
    const HEAD: &[u8] = b"{\"type\":\"";
    if let Some(rest) = env.strip_prefix(HEAD) {
        if let Some(end) = memchr::memchr(b'"', rest) {
            if let Ok(t) = std::str::from_utf8(&rest[..end]) {
                return Cow::Borrowed(t);
            }
        }
    }
    match serde_json::from_slice::<serde_json::Value>(env) {
        Ok(v) => Cow::Owned(v["type"].as_str().unwrap_or("").to_owned()),
        Err(_) => Cow::Borrowed(""),
    }
}

fn switchboard_event(env: &[u8]) -> Event<'_> {
    match &*switchboard_type(env) {
        "room.message" => Event::Delivery(env),
        "system.connection.established" => Event::Ready,
        "room.joined" => Event::Joined,
        "room.left" => Event::Left,
        "system.ping" => Event::Ping,
        "system.pong" => Event::Pong,
        "system.error" | "system.connection.close" => {
            Event::Error(String::from_utf8_lossy(env).into_owned())
        }
        _ => Event::Other,
    }
}

fn nodews_event(data: &[u8]) -> Event<'_> {
    if data.starts_with(b"{\"op\":\"msg\"") {
        Event::Delivery(data)
    } else if data.starts_with(b"{\"op\":\"ping\"") {
        Event::Ping
    } else if data.starts_with(b"{\"op\":\"joined\"") {
        Event::Joined
    } else if data.starts_with(b"{\"op\":\"left\"") {
        Event::Left
    } else if data.starts_with(b"{\"op\":\"error\"") {
        Event::Error(String::from_utf8_lossy(data).into_owned())
    } else {
        Event::Other
    }
}

mod nats {
    use std::sync::LazyLock;

    use memchr::memmem;

    use super::{Event, Message};

    /// Built once: `memmem::find` would build a searcher for every line.
    static CRLF: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\r\n"));

    /// Parses complete protocol lines (and MSG bodies); returns the bytes consumed.
    pub fn parse(data: &[u8], replies: &mut Vec<Message>, f: &mut impl FnMut(Event<'_>)) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            let Some(eol) = CRLF.find(rest) else {
                break;
            };
            let line = &rest[..eol];
            if line.starts_with(b"MSG ") {
                let size = line
                    .rsplit(|&b| b == b' ')
                    .next()
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse::<usize>().ok());
                let Some(size) = size else {
                    f(Event::Error(format!(
                        "bad MSG line {:?}",
                        String::from_utf8_lossy(line)
                    )));
                    pos += eol + 2;
                    continue;
                };
                let end = eol + 2 + size + 2;
                if rest.len() < end {
                    break;
                }
                f(Event::Delivery(&rest[eol + 2..eol + 2 + size]));
                pos += end;
                continue;
            }
            if line == b"PING" {
                replies.push(Message::Binary(b"PONG\r\n".to_vec().into()));
                f(Event::Ping);
            } else if line == b"PONG" {
                f(Event::Pong);
            } else if line.starts_with(b"-ERR") {
                f(Event::Error(String::from_utf8_lossy(line).into_owned()));
            } else {
                f(Event::Other); // INFO, +OK
            }
            pos += eol + 2;
        }
        pos
    }
}

/// A minimal MQTT 3.1.1 codec: the QoS 0 packets a load generator needs.
pub mod mqtt {
    use super::Event;

    fn remaining_length(out: &mut Vec<u8>, mut len: usize) {
        loop {
            let mut byte = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if len == 0 {
                break;
            }
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 5);
        out.push(first);
        remaining_length(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }

    /// CONNECT with a clean session and `keepalive` seconds.
    pub fn connect(client_id: &str, keepalive: u16) -> Vec<u8> {
        let mut body = Vec::with_capacity(16 + client_id.len());
        string(&mut body, "MQTT");
        body.push(4); // protocol level 3.1.1
        body.push(0x02); // clean session
        body.extend_from_slice(&keepalive.to_be_bytes());
        string(&mut body, client_id);
        packet(0x10, &body)
    }

    /// SUBSCRIBE to one topic at QoS 0.
    pub fn subscribe(packet_id: u16, topic: &str) -> Vec<u8> {
        let mut body = Vec::with_capacity(5 + topic.len());
        body.extend_from_slice(&packet_id.to_be_bytes());
        string(&mut body, topic);
        body.push(0);
        packet(0x82, &body)
    }

    /// UNSUBSCRIBE from one topic.
    pub fn unsubscribe(packet_id: u16, topic: &str) -> Vec<u8> {
        let mut body = Vec::with_capacity(4 + topic.len());
        body.extend_from_slice(&packet_id.to_be_bytes());
        string(&mut body, topic);
        packet(0xA2, &body)
    }

    /// PUBLISH at QoS 0.
    pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(2 + topic.len() + payload.len());
        string(&mut body, topic);
        body.extend_from_slice(payload);
        packet(0x30, &body)
    }

    /// PINGREQ.
    pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
    /// DISCONNECT.
    pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

    /// Parses complete packets; returns the bytes consumed.
    pub fn parse(data: &[u8], f: &mut impl FnMut(Event<'_>)) -> usize {
        let mut pos = 0;
        loop {
            let rest = &data[pos..];
            if rest.len() < 2 {
                break;
            }
            let mut len = 0usize;
            let mut mult = 1usize;
            let mut i = 1;
            let mut complete = false;
            while i < rest.len() && i <= 4 {
                let b = rest[i];
                len += (b & 0x7F) as usize * mult;
                mult *= 128;
                i += 1;
                if b & 0x80 == 0 {
                    complete = true;
                    break;
                }
            }
            if !complete || rest.len() < i + len {
                break;
            }
            let body = &rest[i..i + len];
            match rest[0] >> 4 {
                3 => {
                    let qos = (rest[0] >> 1) & 3;
                    if body.len() >= 2 {
                        let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
                        let start = 2 + tlen + if qos > 0 { 2 } else { 0 };
                        if start <= body.len() {
                            f(Event::Delivery(&body[start..]));
                        }
                    }
                }
                2 => {
                    if body.len() >= 2 && body[1] == 0 {
                        f(Event::Ready);
                    } else {
                        f(Event::Error(format!("CONNACK refused: {body:?}")));
                    }
                }
                9 => {
                    if body.len() >= 3 && body[2] & 0x80 == 0 {
                        f(Event::Joined);
                    } else {
                        f(Event::Error(format!("SUBACK failure: {body:?}")));
                    }
                }
                11 => f(Event::Left),
                13 => f(Event::Pong),
                _ => f(Event::Other),
            }
            pos += i + len;
        }
        pos
    }
}

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Which protocol.
    pub target: Target,
    /// `ws://host:port/path`; the host must be a loopback address.
    pub url: String,
    /// The subprotocol offered, if any.
    pub subprotocol: Option<String>,
    /// `host:port` for the TCP connect.
    pub addr: String,
    /// MQTT keepalive (seconds) announced in CONNECT.
    pub mqtt_keepalive: u16,
    /// tungstenite's read buffer per connection.
    pub read_buffer: usize,
    /// The local address to connect from (`--source`), if not the kernel's choice.
    pub source: Option<std::net::IpAddr>,
}

impl Endpoint {
    /// Checks the URL (loopback only) and fills in defaults.
    pub fn new(
        target: Target,
        url: Option<String>,
        subprotocol: Option<String>,
        mqtt_keepalive: u16,
        read_buffer: usize,
    ) -> Result<Endpoint, Error> {
        let url = url.unwrap_or_else(|| target.default_url().to_owned());
        let rest = url
            .strip_prefix("ws://")
            .ok_or("only ws:// URLs are supported")?;
        let authority = rest.split('/').next().unwrap_or("");
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            authority.split(':').next().unwrap_or("")
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false);
        if !loopback {
            return Err(format!("refusing non-loopback host {host:?}: loopback only").into());
        }
        let addr = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let subprotocol = match subprotocol.as_deref() {
            Some("") => None,
            Some(s) => Some(s.to_owned()),
            None => target.default_subprotocol().map(str::to_owned),
        };
        Ok(Endpoint {
            target,
            url,
            subprotocol,
            addr,
            mqtt_keepalive,
            read_buffer,
            source: None,
        })
    }
}

/// Defers the choice of the local port (IPv4) from `bind` to `connect`, where the kernel needs the
/// port to be free only for this destination. Without it, `bind` reserves a port for every
/// destination at once, searching the whole range for one at each call: tens of thousands
/// of connections from one source address then cost seconds of kernel time each batch.
fn bind_address_no_port(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the socket's own and open; the option value is a c_int that
    // lives across the call, and its size is given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One WebSocket connection speaking `target`'s protocol.
pub struct Conn {
    /// The socket.
    pub ws: WebSocketStream<TcpStream>,
    /// Its inbound decoder.
    pub dec: Decoder,
    /// The protocol.
    pub target: Target,
    next_packet_id: u16,
}

/// Upper bound for every handshake step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

impl Conn {
    /// TCP connect, WebSocket handshake, and the protocol's own hello (until ready).
    pub async fn open(ep: &Endpoint, client_id: &str) -> Result<Conn, Error> {
        tokio::time::timeout(STEP_TIMEOUT, Self::open_inner(ep, client_id))
            .await
            .map_err(|_| "connect timed out")?
    }

    async fn open_inner(ep: &Endpoint, client_id: &str) -> Result<Conn, Error> {
        let tcp = match ep.source {
            None => TcpStream::connect(&ep.addr).await?,
            Some(ip) => {
                let dest = tokio::net::lookup_host(&ep.addr)
                    .await?
                    .find(|a| a.is_ipv4() == ip.is_ipv4())
                    .ok_or("the source and the broker's address are of different families")?;
                let socket = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                if ip.is_ipv4() {
                    bind_address_no_port(&socket)?;
                }
                socket.bind(std::net::SocketAddr::new(ip, 0))?;
                socket.connect(dest).await?
            }
        };
        tcp.set_nodelay(true)?;
        let mut req = ep.url.as_str().into_client_request()?;
        if let Some(p) = &ep.subprotocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p)?);
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(ep.read_buffer)
            .write_buffer_size(0);
        let (ws, _resp) =
            tokio_tungstenite::client_async_with_config(req, tcp, Some(config)).await?;
        let mut conn = Conn {
            ws,
            dec: Decoder::new(ep.target),
            target: ep.target,
            next_packet_id: 1,
        };
        match ep.target {
            Target::Switchboard => conn.wait_for(|e| matches!(e, Event::Ready)).await?,
            Target::Nats => {
                conn.send(Message::Binary(Bytes::from_static(
                    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\
                          \"protocol\":1,\"headers\":false,\"lang\":\"rust\",\
                          \"version\":\"loadgen\",\"name\":\"loadgen\"}\r\nPING\r\n",
                )))
                .await?;
                conn.wait_for(|e| matches!(e, Event::Pong)).await?;
            }
            Target::Mqtt => {
                let pkt = mqtt::connect(client_id, ep.mqtt_keepalive);
                conn.send(Message::Binary(pkt.into())).await?;
                conn.wait_for(|e| matches!(e, Event::Ready)).await?;
            }
            Target::Nodews => {}
        }
        Ok(conn)
    }

    /// Sends one frame and flushes it.
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Sends any queued heartbeat answers.
    pub async fn send_replies(&mut self) -> Result<(), Error> {
        if self.dec.replies.is_empty() {
            return Ok(());
        }
        for r in std::mem::take(&mut self.dec.replies) {
            self.ws.feed(r).await?;
        }
        self.ws.flush().await?;
        Ok(())
    }

    /// Reads until an event matches `want` (bounded by [`STEP_TIMEOUT`]); a server error
    /// fails. Heartbeats are answered meanwhile; deliveries are ignored.
    pub async fn wait_for(
        &mut self,
        mut want: impl FnMut(&Event<'_>) -> bool,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| "timed out waiting for the server")?;
            let msg = match msg {
                Some(m) => m?,
                None => return Err("connection closed by the server".into()),
            };
            if let Message::Close(c) = &msg {
                return Err(format!("closed by the server: {c:?}").into());
            }
            let mut found = false;
            let mut err = None;
            self.dec.feed(&msg, &mut |e| {
                if let Event::Error(s) = &e {
                    err.get_or_insert_with(|| s.clone());
                }
                found |= want(&e);
            });
            self.send_replies().await?;
            if let Some(e) = err {
                return Err(format!("server error: {e}").into());
            }
            if found {
                return Ok(());
            }
        }
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        id
    }

    /// Joins (subscribes to) `room` and waits until the server confirms it.
    pub async fn join(&mut self, room: &str) -> Result<(), Error> {
        match self.target {
            Target::Switchboard => {
                let f = format!("{{\"type\":\"room.join\",\"room\":\"{room}\",\"id\":\"j\"}}");
                self.send(Message::Text(f.into())).await?;
                self.wait_for(|e| matches!(e, Event::Joined)).await
            }
            Target::Nodews => {
                let f = format!("{{\"op\":\"join\",\"room\":\"{room}\"}}");
                self.send(Message::Text(f.into())).await?;
                self.wait_for(|e| matches!(e, Event::Joined)).await
            }
            Target::Nats => {
                let sid = self.packet_id();
                let f = format!("SUB {room} {sid}\r\nPING\r\n");
                self.send(Message::Binary(f.into_bytes().into())).await?;
                self.wait_for(|e| matches!(e, Event::Pong)).await
            }
            Target::Mqtt => {
                let id = self.packet_id();
                self.send(Message::Binary(mqtt::subscribe(id, room).into()))
                    .await?;
                self.wait_for(|e| matches!(e, Event::Joined)).await
            }
        }
    }

    /// Leaves `room` (joined as the connection's first subscription) and waits for the
    /// server to confirm.
    pub async fn leave(&mut self, room: &str) -> Result<(), Error> {
        match self.target {
            Target::Switchboard => {
                let f = format!("{{\"type\":\"room.leave\",\"room\":\"{room}\",\"id\":\"l\"}}");
                self.send(Message::Text(f.into())).await?;
                self.wait_for(|e| matches!(e, Event::Left)).await
            }
            Target::Nodews => {
                let f = format!("{{\"op\":\"leave\",\"room\":\"{room}\"}}");
                self.send(Message::Text(f.into())).await?;
                self.wait_for(|e| matches!(e, Event::Left)).await
            }
            Target::Nats => {
                // Subscriptions are numbered from 1 in join order.
                self.send(Message::Binary(b"UNSUB 1\r\nPING\r\n".to_vec().into()))
                    .await?;
                self.wait_for(|e| matches!(e, Event::Pong)).await
            }
            Target::Mqtt => {
                let id = self.packet_id();
                self.send(Message::Binary(mqtt::unsubscribe(id, room).into()))
                    .await?;
                self.wait_for(|e| matches!(e, Event::Left)).await
            }
        }
    }

    /// A client-driven keepalive frame, for protocols where the client must ping (MQTT).
    pub fn keepalive_frame(&self) -> Option<Message> {
        (self.target == Target::Mqtt).then(|| Message::Binary(mqtt::PINGREQ.to_vec().into()))
    }

    /// Says goodbye at the protocol level, then runs the WebSocket closing handshake
    /// (bounded).
    pub async fn close(mut self) -> Result<(), Error> {
        if self.target == Target::Mqtt {
            self.ws
                .feed(Message::Binary(mqtt::DISCONNECT.to_vec().into()))
                .await?;
        }
        self.ws.close(None).await?;
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(target: Target, frames: &[Message]) -> Vec<String> {
        let mut dec = Decoder::new(target);
        let mut out = Vec::new();
        for f in frames {
            dec.feed(f, &mut |e| {
                out.push(match e {
                    Event::Delivery(d) => format!("D:{}", String::from_utf8_lossy(d)),
                    other => format!("{other:?}"),
                })
            });
        }
        out
    }

    #[test]
    fn nats_msgs_packed_and_split() {
        let a = b"MSG a.1 1 3\r\nabc\r\nMSG a.1 1 2\r\nde\r\nPING\r\nMSG a.1 1 4\r\nfg".to_vec();
        let b = b"hi\r\n".to_vec();
        let ev = events(
            Target::Nats,
            &[Message::Binary(a.into()), Message::Binary(b.into())],
        );
        assert_eq!(ev, ["D:abc", "D:de", "Ping", "D:fghi"]);
    }

    #[test]
    fn mqtt_round_trip() {
        let mut bytes = mqtt::publish("t/1", b"hello");
        bytes.extend_from_slice(&[0x90, 0x03, 0x00, 0x01, 0x00]);
        bytes.extend_from_slice(&[0xD0, 0x00]);
        let (x, y) = bytes.split_at(4);
        let ev = events(
            Target::Mqtt,
            &[
                Message::Binary(x.to_vec().into()),
                Message::Binary(y.to_vec().into()),
            ],
        );
        assert_eq!(ev, ["D:hello", "Joined", "Pong"]);
        let long = mqtt::publish("t", &[b'x'; 300]);
        assert_eq!(&long[..3], &[0x30, 0xAF, 0x02]); // 303 = 0x2F + 2*128
    }

    #[test]
    fn switchboard_types() {
        let ev = events(
            Target::Switchboard,
            &[
                Message::Text("{\"type\":\"room.message\",\"payload\":{\"t\":1}}".into()),
                Message::Text("{\"id\":\"x\",\"type\":\"room.joined\"}".into()),
                // Batched: several envelopes, newline-separated; empty lines are skipped.
                Message::Text("{\"type\":\"system.ping\"}\n\n{\"type\":\"ack\"}\n".into()),
            ],
        );
        assert_eq!(
            ev,
            [
                "D:{\"type\":\"room.message\",\"payload\":{\"t\":1}}",
                "Joined",
                "Ping",
                "Other"
            ]
        );
    }

    #[test]
    fn loopback_only() {
        assert!(Endpoint::new(
            Target::Nats,
            Some("ws://10.0.0.1:1/".into()),
            None,
            30,
            4096
        )
        .is_err());
        let ep =
            Endpoint::new(Target::Nats, Some("ws://[::1]:4/x".into()), None, 30, 4096).unwrap();
        assert_eq!(ep.addr, "[::1]:4");
        let ep = Endpoint::new(Target::Mqtt, None, None, 30, 4096).unwrap();
        assert_eq!(ep.addr, "127.0.0.1:18083");
        assert_eq!(ep.subprotocol.as_deref(), Some("mqtt"));
    }
}
