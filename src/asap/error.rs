//! The ASAP layer's one error type, and the one place it becomes a JSON-RPC error object.
//!
//! ASAP clients read two things from an error: the JSON-RPC `code` (the standard -32700 …
//! -32603, and the protocol's own -32000 … -32059) and, in `error.data`, the taxonomy code
//! (`asap:protocol/invalid_timestamp` …) with `recoverable` and retry hints. The real Python
//! client turns `data.asap_taxonomy_code` into the exception it raises, so every error here
//! carries one.

use serde_json::{json, Map, Value};

use crate::actors::router::HandlerError;
use crate::protocol::ErrorCode;

/// JSON-RPC: the text is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: not a request object (or an empty batch).
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: a method other than `asap.send` (or the broker's `asap.register`).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC: `params` or the envelope in it is malformed.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC: the broker failed.
pub const INTERNAL_ERROR: i64 = -32603;
/// ASAP: the `ASAP-Version` asked for is not one the broker speaks.
pub const VERSION_INCOMPATIBLE: i64 = -32000;
/// ASAP: too many messages per second on one connection (the reference server's code).
pub const RATE_LIMITED: i64 = -32001;
/// ASAP: the envelope's timestamp is outside the replay window.
pub const INVALID_TIMESTAMP: i64 = -32002;
/// ASAP: the envelope's nonce was seen before (or is not a string).
pub const INVALID_NONCE: i64 = -32003;
/// ASAP: no handler serves the envelope's payload type or skill.
pub const HANDLER_NOT_FOUND: i64 = -32012;
/// ASAP: the recipient agent is not connected to this broker.
pub const CONNECTION_ERROR: i64 = -32032;
/// ASAP: the handler or recipient agent did not answer in time.
pub const TIMEOUT: i64 = -32033;
/// ASAP: the handler refused the request (its own reason in the message).
pub const REMOTE_GENERIC: i64 = -32034;
/// ASAP: a capacity limit (sessions, agents) is reached.
pub const RESOURCE_EXHAUSTED: i64 = -32040;

/// Why an ASAP request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AsapError {
    /// The frame or body is not JSON.
    #[error("Parse error: {0}")]
    Parse(String),
    /// Not a JSON-RPC 2.0 request object; or an empty or oversized batch.
    #[error("Invalid request: {0}")]
    InvalidRequest(String),
    /// An unknown method.
    #[error("Method not found: {0}")]
    MethodNotFound(String),
    /// `params` or its envelope is malformed; `details` names the fields.
    #[error("Invalid params: {message}")]
    InvalidParams {
        /// What is wrong.
        message: String,
        /// Per-field errors, when there are several.
        details: Vec<String>,
    },
    /// The `ASAP-Version` header names no version the broker speaks.
    #[error("ASAP protocol version incompatible: {requested}")]
    VersionIncompatible {
        /// What the client asked for.
        requested: String,
    },
    /// Too many messages on this connection.
    #[error("Rate limit exceeded; too many messages per second")]
    RateLimited,
    /// The timestamp is too old or too far ahead.
    #[error("{message}")]
    InvalidTimestamp {
        /// The envelope's timestamp as sent.
        timestamp: String,
        /// How far outside the window it is.
        message: String,
    },
    /// The nonce was used before within its window, or is malformed.
    #[error("{message}")]
    InvalidNonce {
        /// Why.
        message: String,
    },
    /// No handler for this payload type or skill.
    #[error("No handler registered for payload type: {0}")]
    HandlerNotFound(String),
    /// The recipient agent is not connected.
    #[error("Recipient {0} is not connected to this broker")]
    RecipientOffline(String),
    /// The handler or agent did not answer within the deadline.
    #[error("{0}")]
    Timeout(String),
    /// A capacity limit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The handler answered with an error of its own.
    #[error("{0}")]
    Handler(String),
    /// The broker failed.
    #[error("Internal error: {0}")]
    Internal(String),
}

impl AsapError {
    /// The JSON-RPC error code.
    pub fn rpc_code(&self) -> i64 {
        match self {
            AsapError::Parse(_) => PARSE_ERROR,
            AsapError::InvalidRequest(_) => INVALID_REQUEST,
            AsapError::MethodNotFound(_) => METHOD_NOT_FOUND,
            AsapError::InvalidParams { .. } => INVALID_PARAMS,
            AsapError::VersionIncompatible { .. } => VERSION_INCOMPATIBLE,
            AsapError::RateLimited => RATE_LIMITED,
            AsapError::InvalidTimestamp { .. } => INVALID_TIMESTAMP,
            AsapError::InvalidNonce { .. } => INVALID_NONCE,
            AsapError::HandlerNotFound(_) => HANDLER_NOT_FOUND,
            AsapError::RecipientOffline(_) => CONNECTION_ERROR,
            AsapError::Timeout(_) => TIMEOUT,
            AsapError::ResourceExhausted(_) => RESOURCE_EXHAUSTED,
            AsapError::Handler(_) => REMOTE_GENERIC,
            AsapError::Internal(_) => INTERNAL_ERROR,
        }
    }

    /// The protocol's taxonomy code, for `error.data`.
    pub fn taxonomy(&self) -> &'static str {
        match self {
            AsapError::Parse(_) => "asap:rpc/parse_error",
            AsapError::InvalidRequest(_) => "asap:rpc/invalid_request",
            AsapError::MethodNotFound(_) => "asap:rpc/method_not_found",
            AsapError::InvalidParams { .. } => "asap:protocol/malformed_envelope",
            AsapError::VersionIncompatible { .. } => "asap:protocol/version_incompatible",
            AsapError::RateLimited => "asap:transport/rate_limited",
            AsapError::InvalidTimestamp { .. } => "asap:protocol/invalid_timestamp",
            AsapError::InvalidNonce { .. } => "asap:protocol/invalid_nonce",
            AsapError::HandlerNotFound(_) => "asap:transport/handler_not_found",
            AsapError::RecipientOffline(_) => "asap:transport/connection_error",
            AsapError::Timeout(_) => "asap:transport/timeout",
            AsapError::ResourceExhausted(_) => "asap:transport/resource_exhausted",
            AsapError::Handler(_) => "asap:rpc/remote_error",
            AsapError::Internal(_) => "asap:rpc/internal_error",
        }
    }

    /// The metrics label of the error: its taxonomy name (`asap:protocol/invalid_nonce` →
    /// `invalid_nonce`).
    pub fn outcome(&self) -> &'static str {
        let taxonomy = self.taxonomy();
        taxonomy.rsplit('/').next().unwrap_or(taxonomy)
    }

    /// Whether trying again (later, or with a fresh timestamp) can succeed.
    pub fn recoverable(&self) -> bool {
        matches!(
            self,
            AsapError::RateLimited
                | AsapError::InvalidTimestamp { .. }
                | AsapError::RecipientOffline(_)
                | AsapError::Timeout(_)
                | AsapError::ResourceExhausted(_)
                | AsapError::Internal(_)
        )
    }

    /// The message of the error object: the standard text for the JSON-RPC codes (what
    /// clients compare against), the specific text otherwise.
    fn message(&self) -> String {
        match self {
            AsapError::Parse(_) => "Parse error".into(),
            AsapError::InvalidRequest(_) => "Invalid request".into(),
            AsapError::MethodNotFound(_) => "Method not found".into(),
            AsapError::InvalidParams { .. } => "Invalid params".into(),
            AsapError::VersionIncompatible { .. } => "ASAP protocol version incompatible".into(),
            AsapError::Internal(_) => "Internal error".into(),
            other => other.to_string(),
        }
    }

    /// The JSON-RPC `error` object: `{code, message, data}`, where `data` has the taxonomy
    /// code (`code` and `asap_taxonomy_code`), `recoverable`, `error` (the specific text),
    /// `details` and, for recoverable errors, `retry_after_ms`.
    pub fn to_object(&self) -> Value {
        let mut details = Map::new();
        let retry_after_ms = match self {
            AsapError::InvalidParams { details: d, .. } if !d.is_empty() => {
                details.insert("validation_errors".into(), json!(d));
                None
            }
            AsapError::VersionIncompatible { requested } => {
                details.insert("requested".into(), json!(requested));
                details.insert(
                    "supported".into(),
                    json!(super::SUPPORTED_TRANSPORT_VERSIONS),
                );
                None
            }
            AsapError::InvalidTimestamp { timestamp, .. } => {
                details.insert("timestamp".into(), json!(timestamp));
                Some(5_000)
            }
            AsapError::HandlerNotFound(payload_type) => {
                details.insert("payload_type".into(), json!(payload_type));
                None
            }
            AsapError::RecipientOffline(urn) => {
                details.insert("recipient".into(), json!(urn));
                Some(1_000)
            }
            AsapError::RateLimited | AsapError::ResourceExhausted(_) => Some(1_000),
            _ => None,
        };
        let mut data = json!({
            "code": self.taxonomy(),
            "asap_taxonomy_code": self.taxonomy(),
            "rpc_code": self.rpc_code(),
            "message": self.message(),
            "error": self.to_string(),
            "recoverable": self.recoverable(),
            "details": details,
        });
        if let Some(ms) = retry_after_ms {
            data["retry_after_ms"] = json!(ms);
        }
        json!({ "code": self.rpc_code(), "message": self.message(), "data": data })
    }
}

impl From<HandlerError> for AsapError {
    /// A handler's refusal, in the ASAP taxonomy.
    fn from(err: HandlerError) -> AsapError {
        match err.code {
            ErrorCode::UnknownType => AsapError::HandlerNotFound(err.message),
            ErrorCode::Timeout => AsapError::Timeout(err.message),
            ErrorCode::RateLimited => AsapError::RateLimited,
            ErrorCode::BadRequest | ErrorCode::TooLarge => AsapError::InvalidParams {
                message: err.message,
                details: Vec::new(),
            },
            ErrorCode::LimitExceeded | ErrorCode::Unavailable => {
                AsapError::ResourceExhausted(err.message)
            }
            ErrorCode::Internal => AsapError::Internal(err.message),
            _ => AsapError::Handler(err.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_error() -> Vec<AsapError> {
        vec![
            AsapError::Parse("x".into()),
            AsapError::InvalidRequest("x".into()),
            AsapError::MethodNotFound("x".into()),
            AsapError::InvalidParams {
                message: "x".into(),
                details: vec!["sender: required".into()],
            },
            AsapError::VersionIncompatible {
                requested: "99.0".into(),
            },
            AsapError::RateLimited,
            AsapError::InvalidTimestamp {
                timestamp: "t".into(),
                message: "old".into(),
            },
            AsapError::InvalidNonce {
                message: "again".into(),
            },
            AsapError::HandlerNotFound("task.request".into()),
            AsapError::RecipientOffline("urn:asap:agent:b".into()),
            AsapError::Timeout("late".into()),
            AsapError::ResourceExhausted("full".into()),
            AsapError::Handler("no".into()),
            AsapError::Internal("bug".into()),
        ]
    }

    #[test]
    fn every_error_has_its_protocol_code_and_a_taxonomy_in_data() {
        let expected = [
            -32700, -32600, -32601, -32602, -32000, -32001, -32002, -32003, -32012, -32032, -32033,
            -32040, -32034, -32603,
        ];
        for (err, code) in every_error().iter().zip(expected) {
            let object = err.to_object();
            assert_eq!(object["code"], code, "{err:?}");
            assert_eq!(object["data"]["rpc_code"], code, "{err:?}");
            let taxonomy = object["data"]["asap_taxonomy_code"].as_str().unwrap();
            assert!(taxonomy.starts_with("asap:"), "{err:?}: {taxonomy}");
            assert_eq!(object["data"]["code"], taxonomy);
            assert!(object["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(object["data"]["recoverable"].is_boolean());
        }
    }

    #[test]
    fn standard_codes_keep_the_standard_message_and_say_the_detail_in_data() {
        let err = AsapError::Parse("expected value at line 1".into());
        let object = err.to_object();
        assert_eq!(object["message"], "Parse error");
        assert_eq!(
            object["data"]["error"],
            "Parse error: expected value at line 1"
        );
        let err = AsapError::VersionIncompatible {
            requested: "99.0".into(),
        };
        let object = err.to_object();
        assert_eq!(object["data"]["details"]["requested"], "99.0");
        assert_eq!(
            object["data"]["details"]["supported"],
            json!(["2.1", "2.2"])
        );
    }

    #[test]
    fn recoverable_errors_carry_a_retry_hint() {
        for err in every_error() {
            let object = err.to_object();
            if err.recoverable() && !matches!(err, AsapError::Timeout(_) | AsapError::Internal(_)) {
                assert!(object["data"]["retry_after_ms"].is_u64(), "{err:?}");
            }
        }
    }

    #[test]
    fn handler_errors_map_into_the_taxonomy() {
        let cases = [
            (ErrorCode::UnknownType, HANDLER_NOT_FOUND),
            (ErrorCode::Timeout, TIMEOUT),
            (ErrorCode::RateLimited, RATE_LIMITED),
            (ErrorCode::BadRequest, INVALID_PARAMS),
            (ErrorCode::Unavailable, RESOURCE_EXHAUSTED),
            (ErrorCode::Internal, INTERNAL_ERROR),
            (ErrorCode::Forbidden, REMOTE_GENERIC),
        ];
        for (code, rpc) in cases {
            let err = AsapError::from(HandlerError::new(code, "m"));
            assert_eq!(err.rpc_code(), rpc, "{code:?}");
        }
    }
}
