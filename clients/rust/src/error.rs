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
    /// The broker answered a JSON-RPC call ([`Client::call`](crate::Client::call)) with an
    /// error object.
    #[error("JSON-RPC error {code}: {message}")]
    Rpc {
        /// The JSON-RPC error code (-32601 for an unknown method, …).
        code: i64,
        /// The error message.
        message: String,
        /// The error's `data`; the broker puts its code name in `data.code`.
        data: Option<serde_json::Value>,
    },
    /// The token callback failed.
    #[error("token refresh failed: {0}")]
    Token(String),
    /// A payload could not be serialised to JSON.
    #[error("payload is not serialisable: {0}")]
    Serialize(String),
    /// The broker's HTTP API answered with an error status and its
    /// `{"error":{"code","message"}}` body ([`HttpClient`](crate::HttpClient),
    /// [`Pool`](crate::Pool) on `http(s)://` URLs).
    #[error("HTTP API error {status} {code}: {message}")]
    Http {
        /// The HTTP status (401, 403, 409, 429, 503, …).
        status: u16,
        /// The broker's error code (`unauthorized`, `conflict`, `rate_limited`, …), or
        /// `http_<status>` when the body was not the broker's (a proxy's error page).
        code: String,
        /// The broker's message.
        message: String,
        /// The `Retry-After` of a 429 (or 503): wait this long before trying again.
        retry_after: Option<std::time::Duration>,
    },
    /// An HTTP request got no usable answer: the connection failed or broke, or the answer
    /// was not the JSON the HTTP API documents.
    #[error("HTTP request failed: {0}")]
    Transport(String),
    /// An ASAP server answered with a JSON-RPC error object
    /// ([`AsapClient`](crate::AsapClient)).
    #[error("ASAP error {code}: {message}")]
    Asap {
        /// The JSON-RPC error code (-32012: no handler for the skill or payload type,
        /// -32032: the recipient agent is not connected, -32602: a malformed envelope, …).
        code: i64,
        /// The error message.
        message: String,
        /// The protocol's taxonomy code from `data.code` (`asap:transport/handler_not_found`),
        /// when the server sent one.
        taxonomy: Option<String>,
        /// The error's `data` (`recoverable`, `retry_after_ms`, `details`, …).
        data: Option<serde_json::Value>,
    },
    /// An ASAP server refused an HTTP request or WebSocket upgrade by status: 401 (the
    /// token), 403 (the origin), 413 (too large), 429 (rate limit), …
    #[error("ASAP server refused the request: HTTP {status}: {message}")]
    AsapRefused {
        /// The HTTP status.
        status: u16,
        /// What the server said.
        message: String,
    },
    /// A server's answer could not be read: not JSON, or a result without a valid envelope.
    #[error("invalid answer: {0}")]
    InvalidAnswer(String),
    /// The operation needs another transport (`asap.register` over HTTP).
    #[error("not supported: {0}")]
    Unsupported(String),
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
