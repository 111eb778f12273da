//! Parsing client frames and encoding server frames.
//!
//! A client frame is either a native envelope (`{"type": …}`) or a JSON-RPC 2.0 request
//! (`{"jsonrpc": "2.0", "method": …}`); both parse into one [`Inbound`]. Every server frame is
//! built here, so the wire shape lives in one file.

use std::time::SystemTime;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::codes::{ErrorCode, JSONRPC_INVALID_REQUEST, JSONRPC_PARSE_ERROR};
use super::types;

/// A parsed client frame.
#[derive(Debug)]
pub struct Inbound {
    /// The message type (`type`, or JSON-RPC `method`).
    pub msg_type: String,
    /// The client's message id, if it sent one.
    pub id: Option<String>,
    /// The room this frame is about, if any.
    pub room: Option<String>,
    /// The payload, kept as raw JSON so a publish is forwarded without re-parsing.
    pub payload: Option<Box<RawValue>>,
    /// How to answer this frame.
    pub reply_to: ReplyTo,
}

/// Where and in which framing a reply goes.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyTo {
    /// A native envelope; the reply carries `correlation_id` = the request's `id`.
    Native {
        /// The request's `id`.
        correlation_id: Option<String>,
    },
    /// A JSON-RPC request; the reply is a JSON-RPC response with the same `id`.
    JsonRpc {
        /// The request's `id` (string, number or null), as sent.
        id: RpcId,
    },
    /// A JSON-RPC notification: the caller asked for no reply.
    JsonRpcNotification,
    /// A raw-framing client ([`crate::endpoint::Framing::Raw`]): no acknowledgements;
    /// errors are `{"event":"error",…}` frames ([`raw_error`]).
    Raw,
}

/// A JSON-RPC request id, kept as the exact text the client sent.
///
/// Echoing a parsed number would change it: `123456789012345678901234567890` would come back
/// as `1.2345678901234568e+29` and `-0` as `-0.0`, and the client would never match its
/// answer.
#[derive(Debug, Clone)]
pub struct RpcId(Box<RawValue>);

impl RpcId {
    /// `null`: the id of an answer to a request whose own id could not be read.
    pub fn null() -> RpcId {
        RpcId(RawValue::NULL.to_owned())
    }

    /// An id from its JSON text: a string, a number or `null`; anything else is `None`.
    pub fn from_json(raw: Box<RawValue>) -> Option<RpcId> {
        match raw.get().as_bytes().first() {
            Some(b'"' | b'-' | b'0'..=b'9') => Some(RpcId(raw)),
            Some(b'n') => Some(RpcId::null()),
            _ => None,
        }
    }

    /// The id as a handler request id: a string's value, a number's text; none for `null`.
    fn as_request_id(&self) -> Option<String> {
        match self.0.get().as_bytes().first() {
            Some(b'"') => serde_json::from_str(self.0.get()).ok(),
            Some(b'n') | None => None,
            Some(_) => Some(self.0.get().to_owned()),
        }
    }
}

impl PartialEq for RpcId {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Serialize for RpcId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Why a frame could not be parsed; it still gets an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ParseError {
    /// The broker error code.
    pub code: ErrorCode,
    /// A message naming what was wrong.
    pub message: String,
    /// How to answer (JSON-RPC errors keep the request id when it could be read).
    pub reply_to: ReplyTo,
    /// The JSON-RPC code for this failure, when answering in JSON-RPC.
    pub jsonrpc_code: i64,
}

impl ParseError {
    fn native(code: ErrorCode, message: impl Into<String>, correlation_id: Option<String>) -> Self {
        ParseError {
            jsonrpc_code: code.jsonrpc_code(),
            code,
            message: message.into(),
            reply_to: ReplyTo::Native { correlation_id },
        }
    }
}

/// Every field either framing may carry; validated into [`Inbound`] afterwards.
#[derive(Deserialize)]
struct RawFrame {
    #[serde(rename = "type")]
    msg_type: Option<String>,
    /// `Some("null")` for `"id": null`, `None` when absent (JSON-RPC tells them apart). Kept
    /// as text so a JSON-RPC id is echoed exactly.
    #[serde(default, deserialize_with = "present")]
    id: Option<Box<RawValue>>,
    room: Option<String>,
    payload: Option<Box<RawValue>>,
    jsonrpc: Option<String>,
    method: Option<String>,
    params: Option<Box<RawValue>>,
}

pub(crate) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// The JSON-RPC `params` of a broker method (`room.*`, `system.*`).
#[derive(Deserialize)]
struct BrokerParams {
    room: Option<String>,
    id: Option<String>,
    payload: Option<Box<RawValue>>,
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Inbound, ParseError> {
    // serde would read a JSON array positionally into the struct; only objects are frames.
    let trimmed = text.trim_start();
    if !trimmed.is_empty() && !trimmed.starts_with('{') {
        let jsonrpc_code = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => JSONRPC_INVALID_REQUEST,
            Err(_) => JSONRPC_PARSE_ERROR,
        };
        return Err(ParseError {
            code: ErrorCode::BadRequest,
            message: "a frame must be a JSON object (JSON-RPC batches are not supported)".into(),
            reply_to: reply_to_for_unreadable(text),
            jsonrpc_code,
        });
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let raw: RawFrame = match serde_path_to_error::deserialize(&mut de) {
        Ok(raw) => raw,
        Err(err) => return Err(describe_decode_error(text, err)),
    };
    if let Err(err) = de.end() {
        return Err(ParseError {
            code: ErrorCode::BadRequest,
            message: format!("invalid JSON: {err}"),
            reply_to: if raw.jsonrpc.is_some() {
                ReplyTo::JsonRpc { id: RpcId::null() }
            } else {
                ReplyTo::Native {
                    correlation_id: None,
                }
            },
            jsonrpc_code: JSONRPC_PARSE_ERROR,
        });
    }
    if raw.jsonrpc.is_some() {
        parse_jsonrpc(raw)
    } else {
        parse_native(raw)
    }
}

fn describe_decode_error(
    text: &str,
    err: serde_path_to_error::Error<serde_json::Error>,
) -> ParseError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let (message, jsonrpc_code) = match inner.classify() {
        serde_json::error::Category::Data if path != "." => (
            format!("field `{path}` has the wrong type: {inner}"),
            JSONRPC_INVALID_REQUEST,
        ),
        serde_json::error::Category::Data => (
            format!("a frame must be a JSON object: {inner}"),
            JSONRPC_INVALID_REQUEST,
        ),
        _ => (format!("invalid JSON: {inner}"), JSONRPC_PARSE_ERROR),
    };
    ParseError {
        code: ErrorCode::BadRequest,
        message,
        reply_to: reply_to_for_unreadable(text),
        jsonrpc_code,
    }
}

/// How to answer a frame whose fields could not be read: a JSON-RPC caller expects a
/// JSON-RPC error (with `id: null`) even when its frame is broken.
fn reply_to_for_unreadable(text: &str) -> ReplyTo {
    if text.contains("\"jsonrpc\"") {
        ReplyTo::JsonRpc { id: RpcId::null() }
    } else {
        ReplyTo::Native {
            correlation_id: None,
        }
    }
}

fn parse_native(raw: RawFrame) -> Result<Inbound, ParseError> {
    let id = match raw.id.as_deref().map(RawValue::get) {
        None | Some("null") => None,
        Some(text) => match serde_json::from_str::<String>(text) {
            Ok(id) => Some(id),
            Err(_) => {
                return Err(ParseError::native(
                    ErrorCode::BadRequest,
                    "field `id` must be a string",
                    None,
                ))
            }
        },
    };
    let Some(msg_type) = raw.msg_type else {
        return Err(ParseError::native(
            ErrorCode::BadRequest,
            "field `type` is missing",
            id,
        ));
    };
    if msg_type.is_empty() {
        return Err(ParseError::native(
            ErrorCode::BadRequest,
            "field `type` is empty",
            id,
        ));
    }
    Ok(Inbound {
        msg_type,
        room: raw.room,
        payload: raw.payload,
        reply_to: ReplyTo::Native {
            correlation_id: id.clone(),
        },
        id,
    })
}

fn parse_jsonrpc(raw: RawFrame) -> Result<Inbound, ParseError> {
    let reply_to = match raw.id.map(RpcId::from_json) {
        None => ReplyTo::JsonRpcNotification,
        Some(Some(id)) => ReplyTo::JsonRpc { id },
        Some(None) => {
            return Err(ParseError {
                code: ErrorCode::BadRequest,
                message: "field `id` must be a string, a number or null".into(),
                reply_to: ReplyTo::JsonRpc { id: RpcId::null() },
                jsonrpc_code: JSONRPC_INVALID_REQUEST,
            })
        }
    };
    let invalid = |message: &str| ParseError {
        code: ErrorCode::BadRequest,
        message: message.to_owned(),
        reply_to: match &reply_to {
            ReplyTo::JsonRpcNotification => ReplyTo::JsonRpc { id: RpcId::null() },
            other => other.clone(),
        },
        jsonrpc_code: JSONRPC_INVALID_REQUEST,
    };
    if raw.jsonrpc.as_deref() != Some("2.0") {
        return Err(invalid("field `jsonrpc` must be \"2.0\""));
    }
    let Some(method) = raw.method.filter(|m| !m.is_empty()) else {
        return Err(invalid("field `method` must be a non-empty string"));
    };
    let rpc_id_string = match &reply_to {
        ReplyTo::JsonRpc { id } => id.as_request_id(),
        _ => None,
    };
    if types::is_broker_type(&method) {
        // Broker methods carry envelope fields in `params`: {room, id?, payload?, …}. An
        // array would be read by position into those fields, so only an object is taken.
        let params = match raw.params {
            None => None,
            Some(params) if !params.get().starts_with('{') => {
                return Err(ParseError {
                    code: ErrorCode::BadRequest,
                    message: "invalid params: must be an object with `room`, `id`, `payload`"
                        .into(),
                    reply_to,
                    jsonrpc_code: ErrorCode::BadRequest.jsonrpc_code(),
                })
            }
            Some(params) => Some(
                serde_json::from_str::<BrokerParams>(params.get())
                    .map(|p| (p, params))
                    .map_err(|err| ParseError {
                        code: ErrorCode::BadRequest,
                        message: format!("invalid params: {err}"),
                        reply_to: reply_to.clone(),
                        jsonrpc_code: ErrorCode::BadRequest.jsonrpc_code(),
                    })?,
            ),
        };
        let (room, id, payload) = match params {
            None => (None, None, None),
            Some((p, whole)) => (p.room, p.id, Some(p.payload.unwrap_or(whole))),
        };
        // The message id of a JSON-RPC publish is `params.id` only: request ids are chosen
        // per connection and would collide in a room's duplicate check.
        return Ok(Inbound {
            msg_type: method,
            id,
            room,
            payload,
            reply_to,
        });
    }
    Ok(Inbound {
        msg_type: method,
        id: rpc_id_string,
        room: None,
        payload: raw.params,
        reply_to,
    })
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A fresh server message id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The envelope of every native server frame.
#[derive(Serialize)]
pub struct ServerMessage<'a, P: Serialize> {
    /// Message type.
    #[serde(rename = "type")]
    pub msg_type: &'a str,
    /// Server-assigned (or, for room messages, client-supplied) id.
    pub id: &'a str,
    /// The id of the request this answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<&'a str>,
    /// Room name for room traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    /// Per-room sequence number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Message payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<P>,
    /// RFC 3339 UTC time the server built this frame.
    pub timestamp: &'a str,
}

impl<P: Serialize> ServerMessage<'_, P> {
    /// Serialises the envelope into the bytes that go on the wire.
    pub fn encode(&self) -> ByteString {
        // Serialising a struct of strings, numbers and JSON values cannot fail.
        ByteString::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// Encodes a server push (no correlation) with a fresh id and timestamp.
pub fn push<P: Serialize>(msg_type: &str, room: Option<&str>, payload: Option<P>) -> ByteString {
    ServerMessage {
        msg_type,
        id: &new_id(),
        correlation_id: None,
        room,
        seq: None,
        payload,
        timestamp: &now_rfc3339(),
    }
    .encode()
}

/// Encodes a room message (`room.message`, or the type a server publish chose). Called once
/// per message; every member gets these bytes.
pub fn room_message(
    msg_type: &str,
    room: &str,
    seq: u64,
    id: &str,
    payload: Option<&RawValue>,
) -> ByteString {
    ServerMessage {
        msg_type,
        id,
        correlation_id: None,
        room: Some(room),
        seq: Some(seq),
        payload,
        timestamp: &now_rfc3339(),
    }
    .encode()
}

/// A successful reply: native envelope of `msg_type`, or a JSON-RPC result.
///
/// `room`/`seq` go into the native envelope; the JSON-RPC result is `rpc_result`.
/// Returns `None` for a JSON-RPC notification, which gets no reply.
pub fn reply<P: Serialize>(
    reply_to: &ReplyTo,
    msg_type: &str,
    room: Option<&str>,
    seq: Option<u64>,
    payload: Option<P>,
    rpc_result: impl FnOnce(Option<P>) -> Value,
) -> Option<ByteString> {
    match reply_to {
        ReplyTo::Native { correlation_id } => Some(
            ServerMessage {
                msg_type,
                id: &new_id(),
                correlation_id: correlation_id.as_deref(),
                room,
                seq,
                payload,
                timestamp: &now_rfc3339(),
            }
            .encode(),
        ),
        ReplyTo::JsonRpc { id } => Some(
            RpcResponse {
                id,
                jsonrpc: "2.0",
                result: Some(rpc_result(payload)),
                error: None,
            }
            .encode(),
        ),
        ReplyTo::JsonRpcNotification | ReplyTo::Raw => None,
    }
}

/// A JSON-RPC response. The fields are in the order `json!` used to write them (sorted), so
/// the wire format did not change when ids began to be echoed verbatim.
#[derive(Serialize)]
struct RpcResponse<'a> {
    id: &'a RpcId,
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

impl RpcResponse<'_> {
    fn encode(&self) -> ByteString {
        // Strings, numbers, JSON values and raw JSON text cannot fail to serialise.
        ByteString::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// An error reply: `system.error`, or a JSON-RPC error object.
///
/// Notifications still get JSON-RPC errors for frames the broker could not act on, since
/// silently dropping them would hide client bugs.
pub fn error(reply_to: &ReplyTo, code: ErrorCode, message: &str) -> ByteString {
    error_with_rpc_code(reply_to, code, code.jsonrpc_code(), message)
}

/// [`error`], with an explicit JSON-RPC code (parse errors use -32700 / -32600).
pub fn error_with_rpc_code(
    reply_to: &ReplyTo,
    code: ErrorCode,
    jsonrpc_code: i64,
    message: &str,
) -> ByteString {
    match reply_to {
        ReplyTo::Native { correlation_id } => ServerMessage {
            msg_type: types::SYSTEM_ERROR,
            id: &new_id(),
            correlation_id: correlation_id.as_deref(),
            room: None,
            seq: None,
            payload: Some(serde_json::json!({ "code": code, "message": message })),
            timestamp: &now_rfc3339(),
        }
        .encode(),
        ReplyTo::JsonRpc { id } => rpc_error(id, code, jsonrpc_code, message),
        ReplyTo::JsonRpcNotification => rpc_error(&RpcId::null(), code, jsonrpc_code, message),
        ReplyTo::Raw => raw_error(code, message),
    }
}

/// A broker error for a raw-framing client. Shaped like the events such clients already
/// handle (`{"event":"error",…}`), with `source` telling it from an application's own.
pub fn raw_error(code: ErrorCode, message: &str) -> ByteString {
    #[derive(Serialize)]
    struct RawError<'a> {
        event: &'static str,
        source: &'static str,
        code: ErrorCode,
        message: &'a str,
    }
    raw_frame(&RawError {
        event: "error",
        source: RAW_SOURCE,
        code,
        message,
    })
}

/// A raw-framing client's confirmation of an action: `{"event":"subscribed","room":…}`.
pub fn raw_event(event: &str, room: &str) -> ByteString {
    #[derive(Serialize)]
    struct Confirmation<'a> {
        event: &'a str,
        source: &'static str,
        room: &'a str,
    }
    raw_frame(&Confirmation {
        event,
        source: RAW_SOURCE,
        room,
    })
}

/// The `source` of the broker's own frames to raw clients, telling them from the events
/// applications publish.
const RAW_SOURCE: &str = "switchboard";

fn raw_frame(value: &impl Serialize) -> ByteString {
    // A struct of strings cannot fail to serialise.
    ByteString::from(serde_json::to_string(value).unwrap_or_default())
}

/// What a raw-framing client receives for a room message frame: its payload's exact bytes;
/// `None` for a frame without a payload.
pub fn payload_of(message_frame: &str) -> Option<ByteString> {
    #[derive(Deserialize)]
    struct Payload<'a> {
        #[serde(borrow)]
        payload: Option<&'a RawValue>,
    }
    let parsed: Payload<'_> = serde_json::from_str(message_frame).ok()?;
    parsed.payload.map(|raw| ByteString::from(raw.get()))
}

fn rpc_error(id: &RpcId, code: ErrorCode, jsonrpc_code: i64, message: &str) -> ByteString {
    RpcResponse {
        id,
        jsonrpc: "2.0",
        error: Some(serde_json::json!({
            "code": jsonrpc_code,
            "message": message,
            "data": { "code": code },
        })),
        result: None,
    }
    .encode()
}

/// The longest client message id, in bytes. Rooms remember ids for deduplication, so an
/// unbounded id would let a publisher make every room hold whatever it sends twice.
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// Checks a client message id: not empty, at most [`MAX_MESSAGE_ID_BYTES`].
pub fn check_message_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("`id` must not be empty (omit it to get a server id)".into());
    }
    if id.len() > MAX_MESSAGE_ID_BYTES {
        return Err(format!(
            "`id` is {} bytes; at most {MAX_MESSAGE_ID_BYTES} are allowed",
            id.len()
        ));
    }
    Ok(())
}

/// Whether `json` (already valid JSON) nests arrays and objects deeper than `max` levels.
///
/// Payloads are stored, replayed and sent to webhooks as raw text, so nothing on the way
/// would notice a 30,000-level document, but most JSON parsers on the receiving end give up
/// (serde_json at 128 levels) and the message would be lost on them.
pub fn nests_deeper_than(json: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether a room name is valid: `[A-Za-z0-9_.:@-]{1,128}`.
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native_corr(inbound: &Inbound) -> Option<&str> {
        match &inbound.reply_to {
            ReplyTo::Native { correlation_id } => correlation_id.as_deref(),
            _ => None,
        }
    }

    fn rpc_id(text: &str) -> RpcId {
        RpcId::from_json(RawValue::from_string(text.into()).unwrap()).unwrap()
    }

    #[test]
    fn jsonrpc_ids_are_echoed_exactly() {
        for id in [
            "123456789012345678901234567890",
            "-0",
            "1e400",
            "0.10",
            r#""a\u00e9""#,
            "null",
        ] {
            let m = parse(&format!(r#"{{"jsonrpc":"2.0","method":"x.y","id":{id}}}"#)).unwrap();
            let reply = reply(&m.reply_to, "x", None, None, None::<()>, |_| Value::Null).unwrap();
            assert!(reply.contains(&format!(r#""id":{id},"#)), "{id}: {reply}");
            let err = error(&m.reply_to, ErrorCode::BadRequest, "no");
            assert!(err.contains(&format!(r#""id":{id},"#)), "{id}: {err}");
        }
        let m = parse(r#"{"jsonrpc":"2.0","method":"x.y","id":"aé"}"#).unwrap();
        assert_eq!(m.id.as_deref(), Some("aé"));
        let m = parse(r#"{"jsonrpc":"2.0","method":"x.y","id":-0}"#).unwrap();
        assert_eq!(m.id.as_deref(), Some("-0"));
    }

    #[test]
    fn broker_methods_take_params_as_an_object_only() {
        for params in ["[\"r\", \"m1\", {\"a\": 1}]", "\"r\"", "3"] {
            let frame =
                format!(r#"{{"jsonrpc":"2.0","method":"room.publish","params":{params},"id":1}}"#);
            let err = parse(&frame).unwrap_err();
            assert_eq!(err.jsonrpc_code, -32602, "{params}");
            assert!(err.message.contains("object"), "{params}: {}", err.message);
        }
        // Application methods get any params as their payload, arrays included.
        let m = parse(r#"{"jsonrpc":"2.0","method":"task.run","params":[1,2],"id":1}"#).unwrap();
        assert_eq!(m.payload.unwrap().get(), "[1,2]");
    }

    #[test]
    fn parses_native_envelope() {
        let m = parse(r#"{"type":"room.publish","id":"m1","room":"a","payload":{"x":1}}"#).unwrap();
        assert_eq!(m.msg_type, "room.publish");
        assert_eq!(m.id.as_deref(), Some("m1"));
        assert_eq!(m.room.as_deref(), Some("a"));
        assert_eq!(m.payload.unwrap().get(), r#"{"x":1}"#);
        assert_eq!(
            parse(r#"{"type":"x","id":"q"}"#).map(|m| native_corr(&m).map(str::to_owned)),
            Ok(Some("q".to_owned()))
        );
    }

    #[test]
    fn wrong_field_types_name_the_field() {
        let err = parse(r#"{"type":"room.join","room":5}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("`room`"), "{}", err.message);
        let err = parse(r#"{"type":7}"#).unwrap_err();
        assert!(err.message.contains("`type`"), "{}", err.message);
        let err = parse(r#"{"type":"x","id":{}}"#).unwrap_err();
        assert!(err.message.contains("`id`"), "{}", err.message);
    }

    #[test]
    fn invalid_json_and_non_objects_are_bad_requests() {
        for text in [
            "",
            "{",
            "nope",
            "[]",
            "3",
            "\"x\"",
            "{}",
            r#"{"type":""}"#,
            "{} {}",
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
        }
    }

    #[test]
    fn parses_jsonrpc_requests() {
        let m =
            parse(r#"{"jsonrpc":"2.0","method":"task.request","params":{"a":1},"id":7}"#).unwrap();
        assert_eq!(m.msg_type, "task.request");
        assert_eq!(m.reply_to, ReplyTo::JsonRpc { id: rpc_id("7") });
        assert_eq!(m.payload.unwrap().get(), r#"{"a":1}"#);

        let m = parse(r#"{"jsonrpc":"2.0","method":"room.join","params":{"room":"r","since_seq":3},"id":"j"}"#)
            .unwrap();
        assert_eq!(m.room.as_deref(), Some("r"));
        assert!(m.payload.unwrap().get().contains("since_seq"));

        let m = parse(
            r#"{"jsonrpc":"2.0","method":"room.publish","params":{"room":"r","payload":[1]}}"#,
        )
        .unwrap();
        assert_eq!(m.reply_to, ReplyTo::JsonRpcNotification);
        assert_eq!(m.payload.unwrap().get(), "[1]");
    }

    #[test]
    fn jsonrpc_errors_use_jsonrpc_codes() {
        let err = parse(r#"{"jsonrpc":"1.0","method":"x","id":1}"#).unwrap_err();
        assert_eq!(err.jsonrpc_code, JSONRPC_INVALID_REQUEST);
        assert_eq!(err.reply_to, ReplyTo::JsonRpc { id: rpc_id("1") });
        let err = parse(r#"{"jsonrpc":"2.0","method":"#).unwrap_err();
        assert_eq!(err.jsonrpc_code, JSONRPC_PARSE_ERROR);
        let err = parse(r#"{"jsonrpc":"2.0","id":2}"#).unwrap_err();
        assert_eq!(err.jsonrpc_code, JSONRPC_INVALID_REQUEST);
        let err = parse(r#"{"jsonrpc":"2.0","method":"x","id":[1]}"#).unwrap_err();
        assert_eq!(err.jsonrpc_code, JSONRPC_INVALID_REQUEST);
        let err = parse(r#"{"jsonrpc":"2.0","method":"x","id":1} x"#).unwrap_err();
        assert_eq!(err.reply_to, ReplyTo::JsonRpc { id: RpcId::null() });
        // `"id": null` is a request (answered with id null), not a notification.
        let m = parse(r#"{"jsonrpc":"2.0","method":"x","id":null}"#).unwrap();
        assert_eq!(m.reply_to, ReplyTo::JsonRpc { id: RpcId::null() });
        // Without `jsonrpc`, a frame is native even if it has a `method`.
        let err = parse(r#"{"method":"x"}"#).unwrap_err();
        assert!(err.message.contains("`type`"));
    }

    #[test]
    fn nesting_depth_ignores_brackets_in_strings() {
        assert!(!nests_deeper_than("1", 0));
        assert!(!nests_deeper_than("[]", 1));
        assert!(nests_deeper_than("[[]]", 1));
        assert!(!nests_deeper_than(r#"{"a":[1,{"b":2}],"c":[]}"#, 3));
        assert!(nests_deeper_than(r#"{"a":[1,{"b":[]}]}"#, 3));
        assert!(!nests_deeper_than(r#"["[[[[", "\"[[[", "{{{"]"#, 1));
        assert!(nests_deeper_than(r#"["\\", [[]]]"#, 2));
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(nests_deeper_than(&deep, 64));
        assert!(!nests_deeper_than(&deep, 65));
    }

    #[test]
    fn message_ids_are_bounded() {
        assert!(check_message_id("m1").is_ok());
        assert!(check_message_id(&"x".repeat(128)).is_ok());
        assert!(check_message_id(&"x".repeat(129)).is_err());
        assert!(check_message_id("").is_err());
    }

    #[test]
    fn room_names() {
        assert!(valid_room_name("conversation:42"));
        assert!(valid_room_name("a.b-c_d@e"));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name("has space"));
        assert!(!valid_room_name("slash/no"));
        assert!(!valid_room_name(&"x".repeat(129)));
        assert!(valid_room_name(&"x".repeat(128)));
    }

    #[test]
    fn error_frames_have_the_documented_shape() {
        let frame = error(
            &ReplyTo::Native {
                correlation_id: Some("c1".into()),
            },
            ErrorCode::Forbidden,
            "no",
        );
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "system.error");
        assert_eq!(v["correlation_id"], "c1");
        assert_eq!(v["payload"]["code"], "forbidden");
        assert!(v["id"].is_string() && v["timestamp"].is_string());
        let frame = error(
            &ReplyTo::JsonRpc { id: rpc_id("3") },
            ErrorCode::UnknownType,
            "no",
        );
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["error"]["code"], -32601);
        assert_eq!(v["error"]["data"]["code"], "unknown_type");
        assert_eq!(v["id"], 3);
    }

    /// Fuzz-ish: mutations of valid frames never panic and always parse or explain.
    #[test]
    fn mutated_frames_never_panic() {
        let seeds = [
            r#"{"type":"room.publish","id":"m1","room":"a","payload":{"x":[1,2,{"y":null}]}}"#,
            r#"{"jsonrpc":"2.0","method":"room.join","params":{"room":"r","since_seq":3},"id":"j"}"#,
            r#"{"type":"system.ping"}"#,
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"{}[]\":,\\ 0123456789abcdefnulltrue-.eE\x00\xff";
        for _ in 0..20_000 {
            let seed = seeds[(next() % seeds.len() as u64) as usize].as_bytes();
            let mut bytes = seed.to_vec();
            for _ in 0..(1 + next() % 4) {
                let pos = (next() % (bytes.len() as u64 + 1)) as usize;
                match next() % 3 {
                    0 if pos < bytes.len() => {
                        bytes.remove(pos);
                    }
                    1 => bytes.insert(pos, alphabet[(next() % alphabet.len() as u64) as usize]),
                    _ if pos < bytes.len() => {
                        bytes[pos] = alphabet[(next() % alphabet.len() as u64) as usize]
                    }
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            match parse(&text) {
                Ok(m) => assert!(!m.msg_type.is_empty()),
                Err(e) => assert!(!e.message.is_empty()),
            }
        }
    }
}
