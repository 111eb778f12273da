//! ASAP frames: what a client's JSON-RPC text means, and the text of every answer.
//!
//! Shared by `/asap/ws` (one object per text frame) and `POST /asap` (an object or a batch).

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{AsapError, Envelope};
use crate::protocol::frame::{self, RpcId};

/// The method that carries an envelope.
pub const SEND: &str = "asap.send";
/// The acknowledgement notification (ADR-16).
pub const ACK: &str = "asap.ack";
/// The broker's own method: a connection names the agent URNs it serves.
pub const REGISTER: &str = "asap.register";
/// The application-level heartbeat, both directions.
pub const PING: &str = r#"{"type":"ping"}"#;
/// The answer to [`PING`].
pub const PONG: &str = r#"{"type":"pong"}"#;

/// What a client's frame asks for.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// `{"type":"ping"}`: answer [`PONG`].
    Ping,
    /// `{"type":"pong"}`: the answer to the broker's ping.
    Pong,
    /// `asap.send`: handle the envelope; `id` is `None` for a notification.
    Send {
        /// The request id, as sent.
        id: Option<RpcId>,
        /// The checked envelope (boxed: it is most of the frame's size).
        envelope: Box<Envelope>,
        /// `params.idempotency_key`, when given.
        idempotency_key: Option<String>,
    },
    /// `asap.register {"agents": [urn, …]}`.
    Register {
        /// The request id.
        id: RpcId,
        /// The URNs to serve.
        agents: Vec<String>,
    },
    /// A client's `asap.ack` for an envelope the broker pushed: nothing to answer.
    Ack,
}

/// A frame the broker cannot act on: answered with `error` under `id` (null when the id
/// could not be read).
#[derive(Debug)]
pub(crate) struct Refused {
    pub id: RpcId,
    pub error: AsapError,
}

#[derive(Deserialize)]
struct RawRequest {
    jsonrpc: Option<Value>,
    method: Option<Value>,
    #[serde(default, deserialize_with = "frame::present")]
    id: Option<Box<RawValue>>,
    params: Option<Value>,
    #[serde(rename = "type")]
    heartbeat: Option<Value>,
}

/// Reads one JSON-RPC request (or heartbeat) from its text.
pub(crate) fn parse(text: &str) -> Result<Incoming, Refused> {
    let refuse = |id: RpcId, error: AsapError| Refused { id, error };
    let value: &RawValue = serde_json::from_str(text)
        .map_err(|e| refuse(RpcId::null(), AsapError::Parse(e.to_string())))?;
    if !value.get().trim_start().starts_with('{') {
        return Err(refuse(
            RpcId::null(),
            AsapError::InvalidRequest("a JSON-RPC request must be an object".into()),
        ));
    }
    let raw: RawRequest = serde_json::from_str(value.get())
        .map_err(|e| refuse(RpcId::null(), AsapError::InvalidRequest(e.to_string())))?;
    if raw.method.is_none() && raw.jsonrpc.is_none() {
        match raw.heartbeat.as_ref().and_then(Value::as_str) {
            Some("ping") => return Ok(Incoming::Ping),
            Some("pong") => return Ok(Incoming::Pong),
            _ => {}
        }
    }
    let id = match raw.id {
        None => None,
        Some(text) => Some(RpcId::from_json(text).ok_or_else(|| {
            refuse(
                RpcId::null(),
                AsapError::InvalidRequest("`id` must be a string, a number or null".into()),
            )
        })?),
    };
    let reply_id = id.clone().unwrap_or_else(RpcId::null);
    if raw.jsonrpc.as_ref().and_then(Value::as_str) != Some("2.0") {
        return Err(refuse(
            reply_id,
            AsapError::InvalidRequest("`jsonrpc` must be \"2.0\"".into()),
        ));
    }
    let method = match raw.method {
        Some(Value::String(method)) => method,
        _ => {
            return Err(refuse(
                reply_id,
                AsapError::InvalidRequest("`method` must be a string".into()),
            ))
        }
    };
    let params = match raw.params {
        Some(Value::Object(params)) => params,
        Some(_) => {
            return Err(refuse(
                reply_id,
                AsapError::InvalidParams {
                    message: "JSON-RPC 'params' must be an object".into(),
                    details: Vec::new(),
                },
            ))
        }
        None if method == SEND || method == REGISTER => {
            return Err(refuse(
                reply_id,
                AsapError::InvalidParams {
                    message: "Missing 'params'".into(),
                    details: Vec::new(),
                },
            ))
        }
        None => Default::default(),
    };
    match method.as_str() {
        SEND => {
            let mut params = params;
            let Some(envelope) = params.remove("envelope") else {
                return Err(refuse(
                    reply_id,
                    AsapError::InvalidParams {
                        message: "Missing 'envelope' in params".into(),
                        details: Vec::new(),
                    },
                ));
            };
            let envelope = Envelope::from_value(envelope).map_err(|e| refuse(reply_id, e))?;
            let idempotency_key = params
                .get("idempotency_key")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(Incoming::Send {
                id,
                envelope: Box::new(envelope),
                idempotency_key,
            })
        }
        REGISTER => {
            let agents = params
                .get("agents")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                })
                .unwrap_or(None);
            match (agents, id) {
                (Some(agents), Some(id)) if !agents.is_empty() => {
                    Ok(Incoming::Register { id, agents })
                }
                (_, id) => Err(refuse(
                    id.unwrap_or_else(RpcId::null),
                    AsapError::InvalidParams {
                        message: "asap.register takes {\"agents\": [<agent URN>, …]} and an id"
                            .into(),
                        details: Vec::new(),
                    },
                )),
            }
        }
        ACK if id.is_none() => Ok(Incoming::Ack),
        other => Err(refuse(
            reply_id,
            AsapError::MethodNotFound(other.to_owned()),
        )),
    }
}

#[derive(Serialize)]
struct Response<'a, R: Serialize> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<R>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
    id: &'a RpcId,
}

#[derive(Serialize)]
struct EnvelopeResult<'a> {
    envelope: &'a Envelope,
}

fn encode(value: &impl Serialize) -> ByteString {
    // Envelopes, strings and JSON values cannot fail to serialise.
    ByteString::from(serde_json::to_string(value).unwrap_or_default())
}

/// `{"jsonrpc":"2.0","result":{"envelope":…},"id":…}`.
pub(crate) fn result(id: &RpcId, envelope: &Envelope) -> ByteString {
    encode(&Response {
        jsonrpc: "2.0",
        result: Some(EnvelopeResult { envelope }),
        error: None,
        id,
    })
}

/// A result of another shape (`asap.register`).
pub(crate) fn result_value(id: &RpcId, value: Value) -> ByteString {
    encode(&Response {
        jsonrpc: "2.0",
        result: Some(value),
        error: None,
        id,
    })
}

/// `{"jsonrpc":"2.0","error":{code,message,data},"id":…}`.
pub(crate) fn error(id: &RpcId, error: &AsapError) -> ByteString {
    encode(&Response::<()> {
        jsonrpc: "2.0",
        result: None,
        error: Some(error.to_object()),
        id,
    })
}

/// A message the broker sends on its own (a forwarded request, a handler's later message):
/// a result frame under an id no client request has, which clients hand to `on_message`.
pub(crate) fn push(envelope: &Envelope) -> ByteString {
    let id = RpcId::from_json(
        RawValue::from_string(json!(format!("push-{}", frame::new_id())).to_string())
            .unwrap_or_else(|_| RawValue::NULL.to_owned()),
    )
    .unwrap_or_else(RpcId::null);
    result(&id, envelope)
}

/// The `asap.ack` notification for an envelope that asked for one.
pub(crate) fn ack(envelope: &Envelope, status: &str, error: Option<&str>) -> ByteString {
    #[derive(Serialize)]
    struct Params<'a> {
        envelope: &'a Envelope,
    }
    #[derive(Serialize)]
    struct Notification<'a> {
        jsonrpc: &'static str,
        method: &'static str,
        params: Params<'a>,
    }
    encode(&Notification {
        jsonrpc: "2.0",
        method: ACK,
        params: Params {
            envelope: &envelope.ack(status, error),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Value {
        json!({
            "asap_version": "0.1",
            "sender": "urn:asap:agent:a",
            "recipient": "urn:asap:agent:b",
            "payload_type": "com.example.note",
            "payload": {"text": "hi"},
        })
    }

    fn send(id: Value) -> String {
        json!({"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": envelope()}, "id": id})
            .to_string()
    }

    fn refused(text: &str) -> (String, i64) {
        match parse(text) {
            Err(Refused { id, error }) => (serde_json::to_string(&id).unwrap(), error.rpc_code()),
            Ok(other) => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn heartbeats_and_sends_are_read() {
        assert!(matches!(parse(PING), Ok(Incoming::Ping)));
        assert!(matches!(parse(PONG), Ok(Incoming::Pong)));
        match parse(&send(json!("ws-req-1"))) {
            Ok(Incoming::Send {
                id: Some(id),
                envelope,
                ..
            }) => {
                assert_eq!(serde_json::to_string(&id).unwrap(), r#""ws-req-1""#);
                assert_eq!(envelope.payload_type, "com.example.note");
            }
            other => panic!("{other:?}"),
        }
        let notification =
            json!({"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": envelope()}});
        assert!(matches!(
            parse(&notification.to_string()),
            Ok(Incoming::Send { id: None, .. })
        ));
    }

    #[test]
    fn every_malformed_request_gets_its_code_and_keeps_its_id() {
        assert_eq!(refused("not json"), ("null".into(), -32700));
        assert_eq!(refused("[1,2]"), ("null".into(), -32600));
        assert_eq!(
            refused(r#"{"jsonrpc":"1.0","method":"asap.send","id":7}"#),
            ("7".into(), -32600)
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","method":"nonexistent.method","params":{},"id":"e1"}"#),
            (r#""e1""#.into(), -32601)
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","method":"asap.send","params":[1],"id":2}"#),
            ("2".into(), -32602)
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","method":"asap.send","params":{},"id":3}"#),
            ("3".into(), -32602)
        );
        let bad_envelope = json!({"jsonrpc":"2.0","method":"asap.send",
            "params":{"envelope":{"sender":"x","recipient":"y","payload_type":"bad"}},"id":"e3"});
        assert_eq!(
            refused(&bad_envelope.to_string()),
            (r#""e3""#.into(), -32602)
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","method":"asap.send","params":{},"id":{"a":1}}"#),
            ("null".into(), -32600)
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","method":"asap.register","params":{"agents":[]},"id":1}"#),
            ("1".into(), -32602)
        );
    }

    #[test]
    fn a_large_numeric_id_comes_back_as_sent() {
        let text = send(json!(1)).replace(r#""id":1"#, r#""id":123456789012345678901234567890"#);
        let Ok(Incoming::Send {
            id: Some(id),
            envelope,
            ..
        }) = parse(&text)
        else {
            panic!("not parsed");
        };
        let answer = result(&id, &envelope);
        assert!(
            answer.contains(r#""id":123456789012345678901234567890"#),
            "{answer}"
        );
    }

    #[test]
    fn acks_and_pushes_are_shaped_as_the_client_reads_them() {
        let envelope = Envelope::from_value(envelope()).unwrap();
        let ack: Value = serde_json::from_str(&ack(&envelope, "received", None)).unwrap();
        assert_eq!(ack["method"], "asap.ack");
        assert!(ack.get("id").is_none(), "a notification has no id");
        assert_eq!(ack["params"]["envelope"]["payload_type"], "MessageAck");
        assert_eq!(
            ack["params"]["envelope"]["payload"]["original_envelope_id"],
            json!(envelope.id())
        );
        let pushed: Value = serde_json::from_str(&push(&envelope)).unwrap();
        assert!(pushed["id"].as_str().unwrap().starts_with("push-"));
        assert_eq!(pushed["result"]["envelope"]["id"], json!(envelope.id()));
    }
}
