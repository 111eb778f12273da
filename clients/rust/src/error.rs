//! The client's error type.

use std::fmt;

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The URL is not a `ws://` (or, with the `rustls` feature, `wss://`) URL the client can use.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The client is closed for good (by [`Client::close`](crate::Client::close), a
    /// permanent close code, or after the last reconnection attempt).
    #[error("client closed ({})", CloseDisplay(*code, reason))]
    Closed {
        /// The WebSocket close code that ended the client, if one was received.
        code: Option<u16>,
        /// The close reason, or what ended the client.
        reason: String,
    },
    /// The broker answered with `system.error`.
    #[error("broker error {code}: {message}")]
    Server {
        /// The broker's error code (`forbidden`, `unknown_type`, `bad_request`, …).
        code: String,
        /// The broker's message.
        message: String,
    },
    /// No answer within the time allowed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection dropped after a request was sent and before its reply came; whether
    /// the broker ran it cannot be known, so it is not resent.
    #[error("connection lost before the reply")]
    ConnectionLost,
    /// The frame is larger than the broker accepts (`limits.max_frame_bytes`); sending it
    /// would close the connection with 1009.
    #[error("frame is {size} bytes; the broker accepts at most {max}")]
    TooLarge {
        /// The frame's size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The token callback failed.
    #[error("token refresh failed: {0}")]
    Token(String),
    /// A payload could not be serialised to JSON.
    #[error("payload is not serialisable: {0}")]
    Serialize(String),
}

struct CloseDisplay<'a>(Option<u16>, &'a str);

impl fmt::Display for CloseDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(code) => write!(f, "{code} {}", self.1),
            None => write!(f, "{}", self.1),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
