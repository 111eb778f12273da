//! A WebSocket on a socket the broker owns once the handshake is done.
//!
//! Under actix-http's h1 dispatcher an upgraded connection keeps the dispatcher, its 8 KiB
//! read and 8 KiB write buffers and actix-ws's 32-frame channel for as long as it lives: most
//! of what an idle connection costs. After a takeover ([`super::takeover`]) the broker holds
//! the socket itself and sizes every buffer by the traffic:
//!
//! - [`SocketMessages`] reads into a buffer on the stack, so a connection waiting for data
//!   holds no read buffer at all; bytes are kept on the heap only while they hold a frame
//!   that has not fully arrived, and that buffer is released as soon as it is consumed.
//! - [`SocketWriter`] encodes what is queued into a buffer made for that write and released
//!   after it.
//!
//! The reader and the writer share the socket through an `Rc<RefCell<..>>`: both run on the
//! connection's worker thread, and neither holds the borrow across an await (every borrow
//! lasts one `poll_read` or `poll_write`), so the two never contend. The same reference lets
//! the write deadline reset the socket ([`super::socket::SocketHandle`]).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_codec::{Decoder, Encoder};
use actix_http::error::PayloadError;
use actix_http::ws::{Codec, Frame, Item, Message, ProtocolError};
use actix_rt::net::TcpStream;
use actix_tls::accept::rustls_0_23::TlsStream;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::deflate::{self, Deflate, InflateError};
use super::guard::FrameLimit;

/// How much one read takes from the socket (on the stack, copied out at the size read).
const READ_CHUNK: usize = 16 * 1024;

/// A connection's byte stream: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + 'static {
    /// The TCP socket underneath (for `SO_LINGER` and `shutdown` on a reset).
    fn tcp(&self) -> &TcpStream;
}

impl Io for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Io for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// The socket, shared by a connection's reader and writer.
pub(crate) type SharedIo = Rc<RefCell<dyn Io>>;

/// A connection handed over after its handshake: the socket, and whatever the client sent
/// behind its request that the dispatcher had already read.
pub struct Socket {
    pub(crate) io: SharedIo,
    pub(crate) leftover: BytesMut,
}

impl Socket {
    pub(crate) fn new<T: Io>(io: T, leftover: BytesMut) -> Socket {
        let io: SharedIo = Rc::new(RefCell::new(io));
        Socket { io, leftover }
    }

    /// Splits into the inbound message stream (frames and messages over `max_frame`
    /// refused, compressed ones too once inflated) and the writer; `deflate` when
    /// permessage-deflate was negotiated.
    pub(crate) fn split(
        self,
        max_frame: usize,
        deflate: Option<Deflate>,
    ) -> (SocketMessages, SocketWriter) {
        let leftover = (!self.leftover.is_empty()).then(|| self.leftover.freeze());
        let chunks = ReadChunks {
            io: self.io.clone(),
            leftover,
        };
        (
            SocketMessages {
                chunks: FrameLimit::new(chunks, max_frame).compressed_messages(deflate.is_some()),
                codec: Codec::new().max_size(max_frame),
                buf: BytesMut::new(),
                ended: false,
                inflating: deflate.map(|_| {
                    Box::new(Inflating {
                        max_message: max_frame,
                        next_compressed: false,
                        gathered: None,
                    })
                }),
            },
            SocketWriter {
                io: self.io,
                codec: Codec::new(),
                deflate,
            },
        )
    }
}

/// The socket's bytes as they arrive, each read copied out at its own size.
struct ReadChunks {
    io: SharedIo,
    leftover: Option<Bytes>,
}

impl Stream for ReadChunks {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(bytes) = this.leftover.take() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        let mut stack = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut stack);
        let mut io = this.io.borrow_mut();
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(Bytes::copy_from_slice(buf.filled())))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(PayloadError::Io(e)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The inbound side: whole frames as actix-ws's `Message`s, with the same errors actix-ws
/// gives, so [`super::Assembler`] handles both transports alike.
pub struct SocketMessages {
    chunks: FrameLimit<ReadChunks>,
    codec: Codec,
    /// Bytes of a frame that has not fully arrived; empty (no allocation) between frames.
    buf: BytesMut,
    ended: bool,
    /// Set when permessage-deflate was negotiated (RSV1 on a message's first frame means
    /// compressed); boxed, so that connections without it do not carry its room.
    inflating: Option<Box<Inflating>>,
}

/// The inbound side's permessage-deflate state.
struct Inflating {
    /// The largest message, inflated.
    max_message: usize,
    /// The frame at the front of the buffer had RSV1 set (cleared before the codec, which
    /// refuses reserved bits).
    next_compressed: bool,
    /// A fragmented compressed message being gathered: whether it is text, and its
    /// compressed bytes so far (inflated once its last fragment is in).
    gathered: Option<(bool, BytesMut)>,
}

impl Stream for SocketMessages {
    type Item = Result<Message, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // What has arrived is decoded before more is read: the frame guard ends the
            // stream after the frames in front of a refused header, and those are delivered
            // first.
            if !this.buf.is_empty() {
                if let Some(inflating) = this.inflating.as_mut() {
                    if !inflating.next_compressed && this.buf[0] & RSV1 != 0 {
                        // The frame guard let RSV1 through only on a message's first frame.
                        this.buf[0] &= !RSV1;
                        inflating.next_compressed = true;
                    }
                }
                match this.codec.decode(&mut this.buf) {
                    Ok(Some(frame)) => {
                        if this.buf.is_empty() {
                            this.buf = BytesMut::new();
                        }
                        let inflated = match this.inflating.as_mut() {
                            Some(inflating) => inflating.frame(frame),
                            None => Some(message(frame)),
                        };
                        match inflated {
                            Some(Ok(message)) => return Poll::Ready(Some(Ok(message))),
                            Some(Err(err)) => {
                                this.ended = true;
                                this.buf = BytesMut::new();
                                return Poll::Ready(Some(Err(err)));
                            }
                            None => continue,
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        this.ended = true;
                        this.buf = BytesMut::new();
                        return Poll::Ready(Some(Err(err)));
                    }
                }
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.chunks).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    if this.buf.is_empty() {
                        this.buf = BytesMut::from(bytes);
                    } else {
                        this.buf.extend_from_slice(&bytes);
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    this.ended = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(ProtocolError::Io(io::Error::other(err)))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// RSV1 in a frame's first byte.
const RSV1: u8 = 0x40;

impl Inflating {
    /// A decoded frame as a message, inflating a compressed one; `None` while a fragmented
    /// compressed message is still being gathered.
    fn frame(&mut self, frame: Frame) -> Option<Result<Message, ProtocolError>> {
        let compressed = std::mem::take(&mut self.next_compressed);
        let (text, bytes) = match frame {
            Frame::Text(bytes) if compressed => (true, bytes),
            Frame::Binary(bytes) if compressed => (false, bytes),
            Frame::Continuation(Item::FirstText(bytes)) if compressed => {
                self.gathered = Some((true, BytesMut::from(&bytes[..])));
                return None;
            }
            Frame::Continuation(Item::FirstBinary(bytes)) if compressed => {
                self.gathered = Some((false, BytesMut::from(&bytes[..])));
                return None;
            }
            Frame::Continuation(Item::Continue(bytes)) if self.gathered.is_some() => {
                if let Some((_, gathered)) = self.gathered.as_mut() {
                    gathered.extend_from_slice(&bytes);
                }
                return None;
            }
            Frame::Continuation(Item::Last(bytes)) if self.gathered.is_some() => {
                let (text, mut gathered) = self.gathered.take()?;
                gathered.extend_from_slice(&bytes);
                (text, gathered.freeze())
            }
            frame => return Some(message(frame)),
        };
        Some(inflated(text, &bytes, self.max_message))
    }
}

/// A compressed message, inflated: text is checked for UTF-8 here (the frame guard cannot
/// read compressed text), a message inflating past `max` is refused (1009).
fn inflated(text: bool, compressed: &[u8], max: usize) -> Result<Message, ProtocolError> {
    let bytes = match deflate::inflate(compressed, max) {
        Ok(bytes) => Bytes::from(bytes),
        Err(InflateError::TooBig) => return Err(ProtocolError::Overflow),
        Err(err @ InflateError::Corrupt) => {
            return Err(ProtocolError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                err,
            )))
        }
    };
    if !text {
        return Ok(Message::Binary(bytes));
    }
    ByteString::try_from(bytes)
        .map(Message::Text)
        .map_err(|err| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, err)))
}

/// A frame as actix-ws would yield it (text that is not UTF-8 is an `InvalidData` error).
fn message(frame: Frame) -> Result<Message, ProtocolError> {
    Ok(match frame {
        Frame::Text(bytes) => ByteString::try_from(bytes)
            .map(Message::Text)
            .map_err(|err| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, err)))?,
        Frame::Binary(bytes) => Message::Binary(bytes),
        Frame::Ping(bytes) => Message::Ping(bytes),
        Frame::Pong(bytes) => Message::Pong(bytes),
        Frame::Close(reason) => Message::Close(reason),
        Frame::Continuation(item) => Message::Continuation(item),
    })
}

/// The outbound side: encodes frames and writes them to the socket.
pub struct SocketWriter {
    io: SharedIo,
    codec: Codec,
    /// permessage-deflate was negotiated: messages of [`deflate::MIN_COMPRESSED`] bytes or
    /// more go compressed.
    deflate: Option<Deflate>,
}

const FIN: u8 = 0x80;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

/// A server frame's header: `first` (FIN, RSV1 and the opcode), then the unmasked payload
/// length (RFC 6455 §5.2).
fn frame_header(first: u8, len: usize, buf: &mut BytesMut) {
    buf.extend_from_slice(&[first]);
    if len < 126 {
        buf.extend_from_slice(&[len as u8]);
    } else if let Ok(len) = u16::try_from(len) {
        buf.extend_from_slice(&[126]);
        buf.extend_from_slice(&len.to_be_bytes());
    } else {
        buf.extend_from_slice(&[127]);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends one message, deflated from its `pieces`, as a single frame with RSV1 set.
fn encode_compressed<'a>(
    deflate: Deflate,
    opcode: u8,
    pieces: impl Iterator<Item = &'a [u8]>,
    buf: &mut BytesMut,
) {
    let body = deflate::compress(deflate, pieces);
    frame_header(FIN | RSV1 | opcode, body.len(), buf);
    buf.extend_from_slice(&body);
}

/// Room messages up to this size are kept compressed for the next member (see
/// [`shared_compressed_text`]).
const SHARED_MAX: usize = 16 * 1024;

/// How many recent compressed messages a worker thread keeps.
const SHARED_ENTRIES: usize = 16;

thread_local! {
    /// The last messages this thread compressed: the message (held, so that its address
    /// cannot be reused by another while it is here), the window, and the encoded frame.
    static RECENT: RefCell<std::collections::VecDeque<(ByteString, u8, Bytes)>> =
        const { RefCell::new(std::collections::VecDeque::new()) };
}

/// `text` as one compressed frame, compressed once for all the connections of this thread
/// that send it. Without context takeover a message compresses to the same bytes for every
/// member of a room, and a room hands each member the same shared buffer: the buffer's
/// address (and length) identifies the message, so a fan-out to N members on a thread costs
/// one compression, not N.
fn shared_compressed_text(deflate: Deflate, text: &ByteString) -> Bytes {
    let compress = || {
        let mut frame = BytesMut::new();
        encode_compressed(
            deflate,
            OPCODE_TEXT,
            std::iter::once(&text.as_bytes()[..]),
            &mut frame,
        );
        frame.freeze()
    };
    if text.len() > SHARED_MAX {
        return compress();
    }
    let bits = deflate.server_window_bits;
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        let same = |(held, held_bits, _): &&(ByteString, u8, Bytes)| {
            *held_bits == bits
                && held.len() == text.len()
                && held.as_bytes().as_ptr() == text.as_bytes().as_ptr()
        };
        if let Some((_, _, frame)) = recent.iter().find(same) {
            return frame.clone();
        }
        let frame = compress();
        if recent.len() == SHARED_ENTRIES {
            recent.pop_front();
        }
        recent.push_back((text.clone(), bits, frame.clone()));
        frame
    })
}

/// The most a control frame carries (RFC 6455 §5.5); a close frame's two of them are its
/// code.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest prefix of a close reason that fits a close frame beside its code, cut at a
/// character boundary.
pub(crate) fn close_reason_prefix(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl SocketWriter {
    /// Appends `msg` to `buf` as one frame. Control frames are cut to what RFC 6455 allows
    /// (a close reason at a character boundary), as strict clients refuse longer ones.
    pub fn encode(&mut self, msg: Message, buf: &mut BytesMut) {
        let msg = match msg {
            Message::Close(Some(mut reason)) => {
                if let Some(description) = reason.description.as_mut() {
                    let end = close_reason_prefix(description).len();
                    description.truncate(end);
                }
                Message::Close(Some(reason))
            }
            Message::Ping(bytes) if bytes.len() > MAX_CONTROL_PAYLOAD => {
                Message::Ping(bytes.slice(..MAX_CONTROL_PAYLOAD))
            }
            Message::Pong(bytes) if bytes.len() > MAX_CONTROL_PAYLOAD => {
                Message::Pong(bytes.slice(..MAX_CONTROL_PAYLOAD))
            }
            other => other,
        };
        if let Some(deflate) = self.deflate {
            match &msg {
                Message::Text(text) if text.len() >= deflate::MIN_COMPRESSED => {
                    return buf.extend_from_slice(&shared_compressed_text(deflate, text));
                }
                Message::Binary(bytes) if bytes.len() >= deflate::MIN_COMPRESSED => {
                    let payload = std::iter::once(&bytes[..]);
                    return encode_compressed(deflate, OPCODE_BINARY, payload, buf);
                }
                _ => {}
            }
        }
        // The server codec's encoder cannot fail on these messages (it errs only on a
        // message too large for the peer, which a server does not check).
        let _ = self.codec.encode(msg, buf);
    }

    /// Appends `texts` as one text frame, newline-separated (the batched framing: compact
    /// JSON never holds a raw newline, so the receiver splits on it). `len` is their total
    /// length with the separators. Written here rather than by the codec, which takes one
    /// contiguous payload and would cost a copy of the batch.
    pub fn encode_joined<'a>(
        &mut self,
        texts: impl Iterator<Item = &'a [u8]>,
        len: usize,
        buf: &mut BytesMut,
    ) {
        let mut first = true;
        let pieces = texts.flat_map(|text| {
            let separator: &[u8] = if std::mem::take(&mut first) {
                b""
            } else {
                b"\n"
            };
            [separator, text]
        });
        if let Some(deflate) = self.deflate.filter(|_| len >= deflate::MIN_COMPRESSED) {
            return encode_compressed(deflate, OPCODE_TEXT, pieces, buf);
        }
        frame_header(FIN | OPCODE_TEXT, len, buf);
        for piece in pieces {
            buf.extend_from_slice(piece);
        }
    }

    /// Writes all of `bytes` and flushes (TLS keeps records until flushed).
    pub async fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let mut written = 0;
        poll_fn(|cx| {
            while written < bytes.len() {
                let mut io = self.io.borrow_mut();
                match Pin::new(&mut *io).poll_write(cx, &bytes[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let mut io = self.io.borrow_mut();
            Pin::new(&mut *io).poll_flush(cx)
        })
        .await
    }

    /// Encodes and writes one message.
    pub async fn send(&mut self, msg: Message) -> io::Result<()> {
        let mut buf = BytesMut::new();
        self.encode(msg, &mut buf);
        self.write(&buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    /// A client frame: masked, as RFC 6455 requires of clients.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        actix_http::ws::Parser::write_message(
            &mut buf,
            payload,
            actix_http::ws::OpCode::from(opcode),
            fin,
            true,
        );
        buf.to_vec()
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    #[actix_rt::test]
    async fn frames_split_across_reads_and_the_leftover_arrive_whole_and_in_order() {
        let (server, mut client) = pair().await;
        let first = client_frame(0x1, true, b"from the handshake's read");
        let socket = Socket::new(server, BytesMut::from(&first[..]));
        let (mut messages, _writer) = socket.split(1 << 20, None);
        let big = vec![b'x'; 100_000];
        let second = client_frame(0x1, true, &big);
        // The second frame arrives in two writes, cut inside its header.
        client.write_all(&second[..1]).await.expect("write");
        client.flush().await.expect("flush");
        let got = messages.next().await.expect("a message").expect("valid");
        assert!(matches!(got, Message::Text(t) if t == "from the handshake's read"));
        client.write_all(&second[1..]).await.expect("write");
        let got = messages.next().await.expect("a message").expect("valid");
        assert!(matches!(got, Message::Text(t) if t.len() == 100_000));
        assert_eq!(messages.buf.capacity(), 0, "nothing held between frames");
        drop(client);
        assert!(messages.next().await.is_none(), "end of stream");
    }

    #[actix_rt::test]
    async fn a_frame_over_the_limit_is_refused_at_its_header_after_the_frames_before_it() {
        let (server, mut client) = pair().await;
        let (mut messages, _writer) = Socket::new(server, BytesMut::new()).split(1000, None);
        let mut bytes = client_frame(0x1, true, b"good");
        // Only the header of a frame declared at 1 MiB: it is refused without its payload.
        bytes.extend_from_slice(&client_frame(0x2, true, &vec![0; 1 << 20])[..14]);
        client.write_all(&bytes).await.expect("write");
        let got = messages.next().await.expect("a message").expect("valid");
        assert!(matches!(got, Message::Text(t) if t == "good"));
        let err = messages
            .next()
            .await
            .expect("an error")
            .expect_err("refused");
        let err = crate::transport::inbound::TransportError::from(err);
        assert_eq!(
            err.close_code(),
            Some(crate::protocol::close::MESSAGE_TOO_BIG)
        );
    }

    #[actix_rt::test]
    async fn the_writer_sends_frames_a_client_decodes_and_cuts_long_control_frames() {
        let (server, client) = pair().await;
        let (_messages, mut writer) = Socket::new(server, BytesMut::new()).split(1000, None);
        let mut buf = BytesMut::new();
        writer.encode(Message::Text("hello".into()), &mut buf);
        writer.encode(
            Message::Close(Some(actix_http::ws::CloseReason {
                code: actix_http::ws::CloseCode::Normal,
                description: Some("é".repeat(100)),
            })),
            &mut buf,
        );
        writer.write(&buf).await.expect("write");
        drop(writer);
        let mut decoded = Vec::new();
        let mut codec = Codec::new().client_mode();
        let mut bytes = BytesMut::new();
        let mut client = client;
        loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::io::AsyncReadExt::read(&mut client, &mut chunk)
                .await
                .expect("read");
            bytes.extend_from_slice(&chunk[..n]);
            while let Some(frame) = codec.decode(&mut bytes).expect("valid frames") {
                decoded.push(frame);
            }
            if decoded.len() == 2 || n == 0 {
                break;
            }
        }
        assert!(matches!(&decoded[0], Frame::Text(t) if &t[..] == b"hello"));
        match &decoded[1] {
            Frame::Close(Some(reason)) => {
                let description = reason.description.as_deref().unwrap_or("");
                assert!(description.len() <= 123, "{}", description.len());
                assert!(description.chars().all(|c| c == 'é'));
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[test]
    fn a_room_message_is_compressed_once_per_thread_and_never_confused_with_another() {
        let deflate = Deflate {
            server_window_bits: 15,
        };
        let message = ByteString::from("{\"type\":\"room.message\"}".repeat(20));
        let first = shared_compressed_text(deflate, &message);
        let again = shared_compressed_text(deflate, &message.clone());
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "the same buffer: compressed once"
        );
        // Another message of the same length, in a buffer of its own: compressed for itself.
        let other = ByteString::from("{\"type\":\"room.messagf\"}".repeat(20));
        let theirs = shared_compressed_text(deflate, &other);
        assert_ne!(theirs, first);
        let inflate = |frame: &Bytes| {
            assert_eq!(frame[0], 0x80 | RSV1 | OPCODE_TEXT);
            let start = if frame[1] == 126 { 4 } else { 2 };
            deflate::inflate(&frame[start..], 1 << 20).unwrap()
        };
        assert_eq!(inflate(&first), message.as_bytes().to_vec());
        assert_eq!(inflate(&theirs), other.as_bytes().to_vec());
    }
}
