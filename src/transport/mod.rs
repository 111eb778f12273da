//! WebSocket transport shared by every route: the handshake and the socket behind it (taken
//! out of the HTTP dispatcher where the server allows it), the frame-size guard in front of
//! the parser, inbound message assembly with the checks RFC 6455 asks for, and the bounded
//! outbound queue with the task that writes it.

pub mod admission;
pub mod deflate;
pub mod guard;
pub mod inbound;
pub mod outbound;
pub mod owned;
pub mod socket;
pub mod takeover;

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_http::ws::{CloseReason, Message, ProtocolError};
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::Stream;

pub use guard::FrameLimit;
pub use inbound::{Assembler, InboundEvent};
pub use outbound::{Outbound, SendError};

use owned::{SocketMessages, SocketWriter};
use socket::SocketHandle;
use takeover::Takeover;

/// An accepted WebSocket: its frames, its writer, and the handle that resets its socket.
pub struct WebSocket {
    /// Inbound frames.
    pub reader: WsReader,
    /// Outbound frames.
    pub writer: WsWriter,
    /// The connection's socket, for the write deadline.
    pub socket: SocketHandle,
}

/// Accepts a WebSocket handshake, choosing the first of the client's subprotocols that is in
/// `protocols`, with frames and messages over `max_frame` bytes refused, and
/// permessage-deflate when `deflate` allows it and the client offers it (on switchboard's own
/// server only: actix-ws has no compression). Answers 101; `open` runs with the WebSocket
/// once the socket is the route's (after the 101 is written when the server takes
/// connections over, at once under actix-ws otherwise).
pub fn accept(
    req: &HttpRequest,
    body: web::Payload,
    protocols: &[&str],
    max_frame: usize,
    deflate: bool,
    open: impl FnOnce(WebSocket) + 'static,
) -> Result<HttpResponse, actix_web::Error> {
    let Some(takeover) = Takeover::of(req) else {
        let socket = SocketHandle::of(req);
        let body = limit_frames(req, body, max_frame)?;
        let (response, ws, stream) = actix_ws::handle_with_protocols(req, body, protocols)?;
        open(WebSocket {
            reader: WsReader::Dispatcher(stream.max_frame_size(max_frame)),
            writer: WsWriter::Dispatcher(ws),
            socket,
        });
        return Ok(response);
    };
    let mut response = actix_http::ws::handshake(req.head())?;
    if let Some(protocol) = select_protocol(req, protocols) {
        response.insert_header((header::SEC_WEBSOCKET_PROTOCOL, protocol));
    }
    let deflate = deflate.then(|| deflate::negotiate(req)).flatten();
    if let Some(agreed) = deflate {
        response.insert_header((header::SEC_WEBSOCKET_EXTENSIONS, agreed.response()));
    }
    takeover.accept(move |socket| {
        let handle = SocketHandle::owned(&socket.io);
        let (reader, writer) = socket.split(max_frame, deflate);
        open(WebSocket {
            reader: WsReader::Owned(reader),
            writer: WsWriter::Owned(writer),
            socket: handle,
        });
    });
    Ok(HttpResponse::from(response.finish().map_into_boxed_body()))
}

/// The first subprotocol the client offers that is one of `protocols`: the one [`accept`]
/// answers with.
pub fn select_protocol<'a>(req: &'a HttpRequest, protocols: &[&str]) -> Option<&'a str> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(',').map(str::trim))
        .find(|offered| protocols.contains(offered))
}

/// A WebSocket's inbound frames.
pub enum WsReader {
    /// Read by the broker from its own socket.
    Owned(SocketMessages),
    /// Read through actix-ws under the HTTP dispatcher.
    Dispatcher(actix_ws::MessageStream),
}

impl Stream for WsReader {
    type Item = Result<Message, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            WsReader::Owned(reader) => Pin::new(reader).poll_next(cx),
            WsReader::Dispatcher(stream) => Pin::new(stream).poll_next(cx),
        }
    }
}

/// A WebSocket's writer.
pub enum WsWriter {
    /// Writes to the broker's own socket.
    Owned(SocketWriter),
    /// Writes through actix-ws's channel to the HTTP dispatcher.
    Dispatcher(actix_ws::Session),
}

/// The connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl WsWriter {
    /// Sends a text frame.
    pub async fn text(&mut self, text: ByteString) -> Result<(), Closed> {
        self.send(Message::Text(text)).await
    }

    /// Sends a binary frame.
    pub async fn binary(&mut self, bytes: Bytes) -> Result<(), Closed> {
        self.send(Message::Binary(bytes)).await
    }

    /// Answers a ping.
    pub async fn pong(&mut self, bytes: Bytes) -> Result<(), Closed> {
        self.send(Message::Pong(bytes)).await
    }

    /// Sends a close frame; nothing may follow it.
    pub async fn close(&mut self, reason: Option<CloseReason>) -> Result<(), Closed> {
        self.send(Message::Close(reason)).await
    }

    async fn send(&mut self, msg: Message) -> Result<(), Closed> {
        match self {
            WsWriter::Owned(writer) => writer.send(msg).await.map_err(|_| Closed),
            WsWriter::Dispatcher(ws) => {
                let sent = match msg {
                    Message::Text(text) => ws.text(text).await,
                    Message::Binary(bytes) => ws.binary(bytes).await,
                    Message::Pong(bytes) => ws.pong(&bytes).await,
                    Message::Ping(bytes) => ws.ping(&bytes).await,
                    Message::Close(reason) => ws.clone().close(reason).await,
                    Message::Continuation(_) | Message::Nop => Ok(()),
                };
                sent.map_err(|_| Closed)
            }
        }
    }
}

/// The body of a WebSocket upgrade request with [`FrameLimit`] in front: a frame or
/// fragmented message declared larger than `max_bytes` ends the stream at its header.
pub fn limit_frames(
    req: &HttpRequest,
    body: web::Payload,
    max_bytes: usize,
) -> Result<web::Payload, actix_web::Error> {
    let guarded = FrameLimit::new(body.into_inner(), max_bytes);
    let mut payload = actix_web::dev::Payload::Stream {
        payload: Box::pin(guarded) as actix_http::BoxedPayloadStream,
    };
    // `web::Payload` has no public constructor; its extractor takes the payload it is given.
    web::Payload::from_request(req, &mut payload).into_inner()
}
