//! Inbound frames → whole messages.
//!
//! actix-ws yields raw frames (continuations included) and reports a bad UTF-8 text frame and
//! a frame with reserved bits set as the same `ProtocolError::Io(InvalidData)`. RFC 6455 wants
//! 1007 for the first and 1002 for the second, so the assembler classifies errors itself and
//! validates fragmented text incrementally (failing fast on the first bad byte).
//!
//! actix-http (3.20) validates close frames in its codec and reports a reserved or undefined
//! close code and a non-UTF-8 close reason both as `ProtocolError::BadOpCode`; the two cannot
//! be told apart, so both close with 1002 (RFC 6455 §7.4.1; Autobahn 7.5.1 accepts 1002 or
//! 1007) and a reason that says what actually happened.

use actix_http::error::PayloadError;
use actix_ws::{CloseReason, Item, Message, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::protocol::close;

/// A whole inbound message.
#[derive(Debug)]
pub enum InboundEvent {
    /// A complete, valid UTF-8 text message.
    Text(ByteString),
    /// A complete binary message.
    Binary(Bytes),
    /// A ping; answer with a pong carrying the same bytes.
    Ping(Bytes),
    /// A pong (its bytes are not needed: any inbound frame counts as liveness).
    Pong,
    /// The peer started (or answered) the closing handshake.
    Close(Option<CloseReason>),
}

/// Why the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A frame or reassembled message exceeded the limit.
    #[error("message too big")]
    TooBig,
    /// Text was not valid UTF-8.
    #[error("invalid UTF-8 in text message")]
    InvalidUtf8,
    /// The peer broke the framing rules.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection failed underneath.
    #[error("connection error: {0}")]
    Io(String),
}

impl TransportError {
    /// The close code to answer with; `None` when the connection is already gone.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            TransportError::TooBig => Some(close::MESSAGE_TOO_BIG),
            TransportError::InvalidUtf8 => Some(close::INVALID_PAYLOAD),
            TransportError::Protocol(_) => Some(close::PROTOCOL_ERROR),
            TransportError::Io(_) => None,
        }
    }

    /// A close reason for the peer.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_code().map(|code| CloseReason {
            code: code.into(),
            description: Some(self.to_string()),
        })
    }
}

impl From<ProtocolError> for TransportError {
    fn from(err: ProtocolError) -> Self {
        match err {
            ProtocolError::Overflow => TransportError::TooBig,
            ProtocolError::Io(io) => {
                // The frame guard ends the body with `Overflow` at an oversized header.
                let overflow = io.get_ref().is_some_and(|inner| {
                    matches!(
                        inner.downcast_ref::<PayloadError>(),
                        Some(PayloadError::Overflow)
                    )
                });
                if overflow {
                    return TransportError::TooBig;
                }
                // The frame guard ends the body with a framing violation (1002) or text that
                // is not UTF-8 (1007).
                let guarded =
                    io.get_ref()
                        .and_then(|inner| match inner.downcast_ref::<PayloadError>() {
                            Some(PayloadError::Io(e)) => e.get_ref(),
                            _ => None,
                        });
                if let Some(guarded) = guarded {
                    if let Some(violation) =
                        guarded.downcast_ref::<super::guard::FramingViolation>()
                    {
                        return TransportError::Protocol(violation.to_string());
                    }
                    if guarded.is::<std::str::Utf8Error>() {
                        return TransportError::InvalidUtf8;
                    }
                }
                let utf8 = io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<std::str::Utf8Error>());
                if utf8 {
                    TransportError::InvalidUtf8
                } else if io.kind() == std::io::ErrorKind::InvalidData {
                    TransportError::Protocol(io.to_string())
                } else {
                    TransportError::Io(io.to_string())
                }
            }
            ProtocolError::BadOpCode => {
                TransportError::Protocol("invalid close code or close reason".into())
            }
            other => TransportError::Protocol(other.to_string()),
        }
    }
}

/// Reassembles fragmented messages with a size limit and incremental UTF-8 checks.
pub struct Assembler {
    max_bytes: usize,
    buf: BytesMut,
    fragment: Option<FragmentKind>,
    utf8_valid_up_to: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum FragmentKind {
    Text,
    Binary,
}

impl Assembler {
    /// An assembler that refuses messages over `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Assembler {
            max_bytes,
            buf: BytesMut::new(),
            fragment: None,
            utf8_valid_up_to: 0,
        }
    }

    /// Feeds one item of the actix-ws stream; returns a message once one is whole.
    pub fn push(
        &mut self,
        item: Result<Message, ProtocolError>,
    ) -> Result<Option<InboundEvent>, TransportError> {
        let event = match item? {
            Message::Text(text) => {
                self.no_fragment_open()?;
                InboundEvent::Text(text)
            }
            Message::Binary(bin) => {
                self.no_fragment_open()?;
                InboundEvent::Binary(bin)
            }
            Message::Ping(b) => InboundEvent::Ping(b),
            Message::Pong(_) => InboundEvent::Pong,
            Message::Close(reason) => InboundEvent::Close(reason),
            Message::Continuation(item) => return self.continuation(item),
            Message::Nop => return Ok(None),
        };
        Ok(Some(event))
    }

    fn no_fragment_open(&self) -> Result<(), TransportError> {
        if self.fragment.is_some() {
            return Err(TransportError::Protocol(
                "new message while a fragmented message is open".into(),
            ));
        }
        Ok(())
    }

    fn continuation(&mut self, item: Item) -> Result<Option<InboundEvent>, TransportError> {
        let (bytes, last) = match item {
            Item::FirstText(b) => {
                self.no_fragment_open()?;
                self.fragment = Some(FragmentKind::Text);
                (b, false)
            }
            Item::FirstBinary(b) => {
                self.no_fragment_open()?;
                self.fragment = Some(FragmentKind::Binary);
                (b, false)
            }
            Item::Continue(b) => (b, false),
            Item::Last(b) => (b, true),
        };
        let Some(kind) = self.fragment else {
            return Err(TransportError::Protocol(
                "continuation frame without a first frame".into(),
            ));
        };
        if self.buf.len() + bytes.len() > self.max_bytes {
            return Err(TransportError::TooBig);
        }
        self.buf.extend_from_slice(&bytes);
        if kind == FragmentKind::Text {
            self.check_utf8(last)?;
        }
        if !last {
            return Ok(None);
        }
        self.fragment = None;
        self.utf8_valid_up_to = 0;
        let whole = std::mem::take(&mut self.buf).freeze();
        Ok(Some(match kind {
            FragmentKind::Binary => InboundEvent::Binary(whole),
            FragmentKind::Text => InboundEvent::Text(
                ByteString::try_from(whole).map_err(|_| TransportError::InvalidUtf8)?,
            ),
        }))
    }

    /// Validates the text received so far; an incomplete sequence at the end is allowed
    /// until the last fragment.
    fn check_utf8(&mut self, last: bool) -> Result<(), TransportError> {
        match std::str::from_utf8(&self.buf[self.utf8_valid_up_to..]) {
            Ok(_) => {
                self.utf8_valid_up_to = self.buf.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !last => {
                self.utf8_valid_up_to += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(TransportError::InvalidUtf8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(a: &mut Assembler, item: Item) -> Result<Option<InboundEvent>, TransportError> {
        a.push(Ok(Message::Continuation(item)))
    }

    #[test]
    fn reassembles_fragments() {
        let mut a = Assembler::new(100);
        assert!(text(&mut a, Item::FirstText(Bytes::from_static(b"he")))
            .unwrap()
            .is_none());
        assert!(text(&mut a, Item::Continue(Bytes::from_static(b"ll")))
            .unwrap()
            .is_none());
        match text(&mut a, Item::Last(Bytes::from_static(b"o"))).unwrap() {
            Some(InboundEvent::Text(t)) => assert_eq!(&*t, "hello"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn split_utf8_sequence_is_fine_but_bad_bytes_fail_fast() {
        let euro = "€".as_bytes();
        let mut a = Assembler::new(100);
        text(&mut a, Item::FirstText(Bytes::copy_from_slice(&euro[..1]))).unwrap();
        text(&mut a, Item::Continue(Bytes::copy_from_slice(&euro[1..2]))).unwrap();
        assert!(text(&mut a, Item::Last(Bytes::copy_from_slice(&euro[2..])))
            .unwrap()
            .is_some());

        let mut a = Assembler::new(100);
        let err = text(&mut a, Item::FirstText(Bytes::from_static(b"ok\xff"))).unwrap_err();
        assert_eq!(err.close_code(), Some(close::INVALID_PAYLOAD));

        let mut a = Assembler::new(100);
        text(&mut a, Item::FirstText(Bytes::copy_from_slice(&euro[..1]))).unwrap();
        let err = text(&mut a, Item::Last(Bytes::new())).unwrap_err();
        assert_eq!(err.close_code(), Some(close::INVALID_PAYLOAD));
    }

    #[test]
    fn size_limit_and_ordering_rules() {
        let mut a = Assembler::new(4);
        text(&mut a, Item::FirstBinary(Bytes::from_static(b"abc"))).unwrap();
        let err = text(&mut a, Item::Last(Bytes::from_static(b"de"))).unwrap_err();
        assert_eq!(err.close_code(), Some(close::MESSAGE_TOO_BIG));

        let mut a = Assembler::new(100);
        let err = text(&mut a, Item::Continue(Bytes::from_static(b"x"))).unwrap_err();
        assert_eq!(err.close_code(), Some(close::PROTOCOL_ERROR));
    }

    #[test]
    fn classifies_actix_errors() {
        let bad = vec![b'o', b'k', 0xff];
        let utf8 = std::str::from_utf8(&bad).unwrap_err();
        let err: TransportError =
            ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, utf8)).into();
        assert_eq!(err.close_code(), Some(close::INVALID_PAYLOAD));
        let err: TransportError = ProtocolError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "Received a frame with non-zero reserved bits",
        ))
        .into();
        assert_eq!(err.close_code(), Some(close::PROTOCOL_ERROR));
        let err: TransportError = ProtocolError::Overflow.into();
        assert_eq!(err.close_code(), Some(close::MESSAGE_TOO_BIG));
        // What actix-ws makes of the frame guard's error.
        let err: TransportError =
            ProtocolError::Io(std::io::Error::other(PayloadError::Overflow)).into();
        assert_eq!(err.close_code(), Some(close::MESSAGE_TOO_BIG));
        let err: TransportError = ProtocolError::BadOpCode.into();
        assert_eq!(err.close_code(), Some(close::PROTOCOL_ERROR));
        assert!(err.to_string().contains("close code"), "{err}");
    }
}
