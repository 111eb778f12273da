//! Error codes and close codes: values owned by the protocol, used by name everywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The error code carried in `system.error.payload.code` and in HTTP error bodies.
///
/// One place maps each code to an HTTP status and a JSON-RPC error code, so handlers never
/// pick numbers themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or request is malformed or has a field of the wrong type.
    BadRequest,
    /// No handler is registered for the message type.
    UnknownType,
    /// The caller is not authenticated.
    Unauthorized,
    /// The caller is authenticated but not allowed to do this.
    Forbidden,
    /// The target (room, session, resource) does not exist.
    NotFound,
    /// The HTTP method is not one the path serves (HTTP API only).
    MethodNotAllowed,
    /// The request conflicts with the target's state (HTTP API only).
    Conflict,
    /// The request is well-formed JSON but its values are not acceptable (HTTP API only).
    Unprocessable,
    /// The frame or body exceeds a configured size limit.
    TooLarge,
    /// The caller exceeded a rate limit.
    RateLimited,
    /// A capacity limit is reached: the broker's room count, a user's session count.
    LimitExceeded,
    /// A handler did not answer in time.
    Timeout,
    /// The client did not send its request body in time (HTTP API only).
    RequestTimeout,
    /// The broker failed; the caller did nothing wrong.
    Internal,
    /// A service the broker depends on (its engine's Redis) is unreachable; retry later (a
    /// publish with the same message id is not delivered twice).
    Unavailable,
}

impl ErrorCode {
    /// The wire name, as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unprocessable => "unprocessable",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// The HTTP status an API error with this code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::UnknownType => 404,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::Unprocessable => 422,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            // Capacity, not the caller's pace: retrying elsewhere or later may work.
            ErrorCode::LimitExceeded => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The JSON-RPC 2.0 error code for a reply to a JSON-RPC request.
    ///
    /// Codes outside the JSON-RPC reserved set use the implementation-defined server-error
    /// range (-32000 to -32099); the broker's own name is always in `error.data.code`.
    pub fn jsonrpc_code(self) -> i64 {
        match self {
            ErrorCode::BadRequest => -32602,
            ErrorCode::UnknownType => -32601,
            ErrorCode::Internal => -32603,
            ErrorCode::Unauthorized => -32001,
            ErrorCode::Forbidden => -32003,
            ErrorCode::NotFound => -32004,
            ErrorCode::MethodNotAllowed => -32005,
            ErrorCode::Conflict => -32009,
            ErrorCode::Unprocessable => -32022,
            ErrorCode::TooLarge => -32013,
            ErrorCode::RateLimited => -32029,
            ErrorCode::LimitExceeded => -32053,
            ErrorCode::Timeout => -32008,
            ErrorCode::RequestTimeout => -32007,
            ErrorCode::Unavailable => -32050,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// JSON-RPC 2.0 parse error: the frame was not JSON.
pub const JSONRPC_PARSE_ERROR: i64 = -32700;
/// JSON-RPC 2.0 invalid request: JSON, but not a valid request object.
pub const JSONRPC_INVALID_REQUEST: i64 = -32600;

/// WebSocket close codes the broker sends (RFC 6455 plus the 4xxx application range).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Protocol error (bad framing, bad reserved bits, bad close code).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: a room the token may not join, a bad endpoint parameter, a
    /// disconnect by the server.
    pub const POLICY: u16 = 1008;
    /// A frame or message exceeded the size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The broker hit an internal error.
    pub const INTERNAL: u16 = 1011;
    /// Graceful shutdown: reconnect later (to this or another instance).
    pub const SERVICE_RESTART: u16 = 1012;
    /// A service the broker needs (its engine's Redis) is unreachable: retry later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token was missing, expired, badly signed or otherwise rejected.
    pub const AUTH_FAILED: u16 = 4000;
    /// The session kept exceeding its inbound rate limit.
    pub const RATE_LIMIT_ABUSE: u16 = 4008;
    /// The session could not keep up with its outbound traffic.
    pub const SLOW_CONSUMER: u16 = 4009;
    /// No inbound frame within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4010;
    /// The user already has `limits.max_sessions_per_user` sessions open.
    pub const TOO_MANY_SESSIONS: u16 = 4029;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::UnknownType,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::TooLarge,
            ErrorCode::RateLimited,
            ErrorCode::LimitExceeded,
            ErrorCode::Timeout,
            ErrorCode::RequestTimeout,
            ErrorCode::Internal,
            ErrorCode::Unavailable,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
