//! The ASAP envelope: parsed strictly, checked once, written back with exactly the protocol's
//! fields.
//!
//! The real client validates every envelope it receives with unknown fields forbidden, and a
//! validation failure inside its receive loop ends the loop for good. So the broker never
//! adds a field: what it has to say about a message goes in `extensions`.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::AsapError;
use crate::protocol::frame;

/// The longest agent URN the protocol allows.
pub const MAX_URN_LENGTH: usize = 256;
/// Envelopes older than this are refused as replays (the protocol's window).
pub const MAX_ENVELOPE_AGE: Duration = Duration::from_secs(300);
/// Envelopes dated further ahead than this are refused (clock skew allowance).
pub const MAX_FUTURE_TOLERANCE: Duration = Duration::from_secs(30);

/// An ASAP message envelope (`params.envelope` of `asap.send`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Unique id; the broker assigns one when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// The protocol version the sender speaks (e.g. `0.1`).
    pub asap_version: String,
    /// RFC 3339 time the sender built it; the broker fills it in when absent.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// The sender's agent URN (`urn:asap:agent:{name}`).
    pub sender: String,
    /// The recipient's agent URN.
    pub recipient: String,
    /// What the payload is (`task.request`, `TaskRequest`, or an application's own type).
    pub payload_type: String,
    /// The message itself: always a JSON object.
    pub payload: Map<String, Value>,
    /// For a reply: the id of the envelope it answers.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Distributed trace id, carried through unchanged.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Whether the receiver must acknowledge it (`asap.ack`) on WebSocket.
    #[serde(default)]
    pub requires_ack: bool,
    /// Anything else: a replay `nonce`, and the broker's own metadata.
    #[serde(default)]
    pub extensions: Option<Map<String, Value>>,
}

/// The payload type key used to match payload types written in any of the protocol's
/// spellings (`task.request`, `TaskRequest`, `task_request`): lower-case letters and digits.
pub fn normalized_type(payload_type: &str) -> String {
    payload_type
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether `urn` is an agent URN: `urn:asap:agent:` then a name of `a-z 0-9 -`, optionally
/// `:` and a second such part, at most [`MAX_URN_LENGTH`] bytes.
pub fn valid_agent_urn(urn: &str) -> bool {
    let Some(rest) = urn.strip_prefix("urn:asap:agent:") else {
        return false;
    };
    let part = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    urn.len() <= MAX_URN_LENGTH
        && match rest.split_once(':') {
            Some((name, qualifier)) => part(name) && part(qualifier),
            None => part(rest),
        }
}

/// The fields of a `TaskRequest` payload, which the built-in skills read and the protocol
/// validates strictly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Fields read only to check them.
struct TaskRequest {
    conversation_id: String,
    #[serde(default)]
    parent_task_id: Option<String>,
    skill_id: String,
    input: Map<String, Value>,
    #[serde(default)]
    config: Option<Map<String, Value>>,
}

/// A `MessageAck` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct MessageAck {
    original_envelope_id: String,
    status: AckStatus,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AckStatus {
    Received,
    Processed,
    Rejected,
}

/// A `TaskCancel` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TaskCancel {
    task_id: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Payload types whose envelopes answer another and so must say which (`correlation_id`).
const CORRELATED_TYPES: [&str; 4] = [
    "taskresponse",
    "taskstream",
    "mcptoolresult",
    "mcpresourcedata",
];

impl Envelope {
    /// Reads and checks an envelope from `params.envelope`; fills in a missing id and
    /// timestamp. The error names the field that is wrong.
    pub fn from_value(value: Value) -> Result<Envelope, AsapError> {
        if !value.is_object() {
            return Err(invalid("'envelope' must be a JSON object"));
        }
        let mut envelope: Envelope =
            serde_path_to_error::deserialize(value).map_err(|e| AsapError::InvalidParams {
                message: "Invalid envelope structure".into(),
                details: vec![format!("{}: {}", e.path(), e.inner())],
            })?;
        envelope.check()?;
        if envelope.id.as_deref().is_none_or(str::is_empty) {
            envelope.id = Some(frame::new_id());
        }
        if envelope.timestamp.is_none() {
            envelope.timestamp = Some(frame::now_rfc3339());
        }
        Ok(envelope)
    }

    fn check(&self) -> Result<(), AsapError> {
        let mut problems = Vec::new();
        if self.asap_version.is_empty() {
            problems.push("asap_version: must not be empty".to_owned());
        }
        for (field, urn) in [("sender", &self.sender), ("recipient", &self.recipient)] {
            if !valid_agent_urn(urn) {
                problems.push(format!(
                    "{field}: must be an agent URN `urn:asap:agent:{{name}}` \
                     (a-z 0-9 -, at most {MAX_URN_LENGTH} bytes)"
                ));
            }
        }
        if self.payload_type.is_empty() {
            problems.push("payload_type: must not be empty".to_owned());
        }
        let kind = normalized_type(&self.payload_type);
        let payload = Value::Object(self.payload.clone());
        let checked = match kind.as_str() {
            "taskrequest" => payload_as::<TaskRequest>(payload),
            "messageack" => payload_as::<MessageAck>(payload),
            "taskcancel" => payload_as::<TaskCancel>(payload),
            _ => Ok(()),
        };
        if let Err(problem) = checked {
            problems.push(problem);
        }
        if CORRELATED_TYPES.contains(&kind.as_str())
            && self.correlation_id.as_deref().is_none_or(str::is_empty)
        {
            problems.push(format!(
                "correlation_id: a {} must say which request it answers",
                self.payload_type
            ));
        }
        if let Some(ts) = &self.timestamp {
            if parse_timestamp(ts).is_none() {
                problems.push(format!("timestamp: `{ts}` is not an RFC 3339 date-time"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AsapError::InvalidParams {
                message: "Invalid envelope structure".into(),
                details: problems,
            })
        }
    }

    /// The envelope's id (always set once parsed).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// The skill a `TaskRequest` asks for.
    pub fn skill_id(&self) -> Option<&str> {
        if normalized_type(&self.payload_type) != "taskrequest" {
            return None;
        }
        self.payload.get("skill_id").and_then(Value::as_str)
    }

    /// The replay nonce in `extensions.nonce`: `Ok(None)` when there is none, an error
    /// when it is not a non-empty string.
    pub fn nonce(&self) -> Result<Option<&str>, AsapError> {
        match self.extensions.as_ref().and_then(|e| e.get("nonce")) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(Some(s)),
            Some(_) => Err(AsapError::InvalidNonce {
                message: "extensions.nonce must be a string of 1 to 256 bytes".into(),
            }),
        }
    }

    /// Refuses an envelope dated outside the replay window (`now` is the broker's clock).
    pub fn check_freshness(&self, now: SystemTime) -> Result<(), AsapError> {
        let ts = self.timestamp.as_deref().unwrap_or_default();
        let Some(at) = parse_timestamp(ts) else {
            return Err(AsapError::InvalidTimestamp {
                timestamp: ts.to_owned(),
                message: "Envelope timestamp is not a date-time".into(),
            });
        };
        match now.duration_since(at) {
            Ok(age) if age > MAX_ENVELOPE_AGE => Err(AsapError::InvalidTimestamp {
                timestamp: ts.to_owned(),
                message: format!(
                    "Envelope timestamp is too old: {}s > {}s",
                    age.as_secs(),
                    MAX_ENVELOPE_AGE.as_secs()
                ),
            }),
            Ok(_) => Ok(()),
            Err(ahead) if ahead.duration() > MAX_FUTURE_TOLERANCE => {
                Err(AsapError::InvalidTimestamp {
                    timestamp: ts.to_owned(),
                    message: format!(
                        "Envelope timestamp is {}s in the future (at most {}s allowed)",
                        ahead.duration().as_secs(),
                        MAX_FUTURE_TOLERANCE.as_secs()
                    ),
                })
            }
            Err(_) => Ok(()),
        }
    }

    /// An envelope answering this one: from its recipient (or `sender`) back to its sender,
    /// correlated to its id, in the same trace.
    pub fn answer(
        &self,
        sender: &str,
        payload_type: &str,
        payload: Map<String, Value>,
    ) -> Envelope {
        Envelope {
            id: Some(frame::new_id()),
            asap_version: self.asap_version.clone(),
            timestamp: Some(frame::now_rfc3339()),
            sender: sender.to_owned(),
            recipient: self.sender.clone(),
            payload_type: payload_type.to_owned(),
            payload,
            correlation_id: Some(self.id().to_owned()),
            trace_id: self.trace_id.clone(),
            requires_ack: false,
            extensions: None,
        }
    }

    /// The `MessageAck` envelope for this one (`received`, `processed` or `rejected`).
    pub fn ack(&self, status: &str, error: Option<&str>) -> Envelope {
        let mut payload = Map::new();
        payload.insert("original_envelope_id".into(), Value::from(self.id()));
        payload.insert("status".into(), Value::from(status));
        payload.insert("error".into(), error.map_or(Value::Null, Value::from));
        let mut ack = self.answer(&self.recipient, "MessageAck", payload);
        ack.correlation_id = None;
        ack
    }
}

fn invalid(message: &str) -> AsapError {
    AsapError::InvalidParams {
        message: message.to_owned(),
        details: Vec::new(),
    }
}

fn payload_as<T: serde::de::DeserializeOwned>(payload: Value) -> Result<(), String> {
    serde_path_to_error::deserialize::<_, T>(payload)
        .map(drop)
        .map_err(|e| format!("payload.{}: {}", e.path(), e.inner()))
}

/// Reads an RFC 3339 date-time: `Z`, or a `±HH:MM` offset (which Python's `isoformat` writes
/// for aware datetimes other than pydantic's UTC).
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    if text.ends_with('Z') || text.ends_with('z') {
        return humantime::parse_rfc3339_weak(&text[..text.len() - 1]).ok();
    }
    let split = text.len().checked_sub(6)?;
    let (base, offset) = (text.get(..split)?, text.get(split..)?);
    let sign = match offset.as_bytes() {
        [b'+', _, _, b':', _, _] => 1i64,
        [b'-', _, _, b':', _, _] => -1,
        _ => return None,
    };
    let hours: u64 = offset.get(1..3)?.parse().ok()?;
    let minutes: u64 = offset.get(4..6)?.parse().ok()?;
    let local = humantime::parse_rfc3339_weak(base).ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    // Local time = UTC + offset, so UTC = local − offset.
    if sign > 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> Value {
        json!({
            "id": "01HX0000000000000000000000",
            "asap_version": "0.1",
            "timestamp": "2026-12-03T16:00:00.123456Z",
            "sender": "urn:asap:agent:client",
            "recipient": "urn:asap:agent:switchboard",
            "payload_type": "task.request",
            "payload": {"conversation_id": "c1", "skill_id": "echo", "input": {"q": 1}},
            "correlation_id": null,
            "trace_id": "t1",
            "requires_ack": true,
            "extensions": {"nonce": "n1"}
        })
    }

    fn problems(value: Value) -> Vec<String> {
        match Envelope::from_value(value) {
            Err(AsapError::InvalidParams { details, .. }) => details,
            other => panic!("expected invalid params, got {other:?}"),
        }
    }

    #[test]
    fn a_client_envelope_is_read_and_written_back_with_only_protocol_fields() {
        let envelope = Envelope::from_value(request()).unwrap();
        assert_eq!(envelope.skill_id(), Some("echo"));
        assert_eq!(envelope.nonce().unwrap(), Some("n1"));
        assert!(envelope.requires_ack);
        let written = serde_json::to_value(&envelope).unwrap();
        let mut fields: Vec<_> = written.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "asap_version",
                "correlation_id",
                "extensions",
                "id",
                "payload",
                "payload_type",
                "recipient",
                "requires_ack",
                "sender",
                "timestamp",
                "trace_id"
            ]
        );
        assert_eq!(written, request());
    }

    #[test]
    fn missing_id_and_timestamp_are_filled_in() {
        let mut value = request();
        value.as_object_mut().unwrap().remove("id");
        value.as_object_mut().unwrap().remove("timestamp");
        let envelope = Envelope::from_value(value).unwrap();
        assert!(!envelope.id().is_empty());
        assert!(parse_timestamp(envelope.timestamp.as_deref().unwrap()).is_some());
    }

    #[test]
    fn unknown_fields_wrong_types_and_bad_urns_are_named() {
        let mut value = request();
        value["surprise"] = json!(1);
        assert!(
            problems(value)[0].contains("surprise"),
            "unknown field named"
        );
        let mut value = request();
        value["payload"] = json!([1]);
        assert!(problems(value)[0].starts_with("payload"));
        let mut value = request();
        value["sender"] = json!("agent-without-urn");
        value["recipient"] = json!("urn:asap:agent:UPPER");
        let found = problems(value);
        assert!(found.iter().any(|p| p.starts_with("sender")), "{found:?}");
        assert!(
            found.iter().any(|p| p.starts_with("recipient")),
            "{found:?}"
        );
        assert!(problems(json!({"sender": "x"}))[0].contains("asap_version"));
        assert!(matches!(
            Envelope::from_value(json!("text")),
            Err(AsapError::InvalidParams { .. })
        ));
    }

    #[test]
    fn known_payloads_are_checked_and_others_pass_through() {
        let mut value = request();
        value["payload"] = json!({});
        let found = problems(value);
        assert!(found[0].starts_with("payload."), "{found:?}");
        let mut value = request();
        value["payload"]["extra"] = json!(true);
        assert!(problems(value)[0].contains("extra"));
        let mut value = request();
        value["payload_type"] = json!("TaskResponse");
        value["payload"] = json!({"task_id": "t", "status": "completed"});
        assert!(problems(value)[0].starts_with("correlation_id"));
        let mut value = request();
        value["payload_type"] = json!("MessageAck");
        value["payload"] = json!({"original_envelope_id": "x", "status": "lost"});
        assert!(problems(value)[0].starts_with("payload.status"));
        let mut value = request();
        value["payload_type"] = json!("com.example.custom");
        value["payload"] = json!({"anything": [1, 2]});
        assert!(Envelope::from_value(value).is_ok());
    }

    #[test]
    fn urns_follow_the_protocol_pattern() {
        for good in [
            "urn:asap:agent:a",
            "urn:asap:agent:a-1:b2",
            "urn:asap:agent:0",
        ] {
            assert!(valid_agent_urn(good), "{good}");
        }
        let long = format!("urn:asap:agent:{}", "a".repeat(250));
        for bad in [
            "urn:asap:agent:",
            "urn:asap:agent:A",
            "urn:asap:agent:a:b:c",
            "urn:asap:agent:a_b",
            "urn:asap:agent:a:",
            "asap:agent:a",
            long.as_str(),
        ] {
            assert!(!valid_agent_urn(bad), "{bad}");
        }
    }

    #[test]
    fn freshness_allows_the_window_and_refuses_outside_it() {
        let now = humantime::parse_rfc3339("2026-12-03T16:00:00Z").unwrap();
        let at = |ts: &str| {
            let mut value = request();
            value["timestamp"] = json!(ts);
            Envelope::from_value(value).unwrap().check_freshness(now)
        };
        assert!(at("2026-12-03T15:56:00Z").is_ok());
        assert!(at("2026-12-03T16:00:20Z").is_ok());
        assert!(at("2026-12-03T17:00:10+01:00").is_ok(), "offset applied");
        assert!(matches!(
            at("2026-12-03T15:54:00Z"),
            Err(AsapError::InvalidTimestamp { .. })
        ));
        assert!(matches!(
            at("2026-12-03T16:01:00Z"),
            Err(AsapError::InvalidTimestamp { .. })
        ));
        let mut value = request();
        value["timestamp"] = json!("yesterday");
        assert!(problems(value)[0].starts_with("timestamp"));
    }

    #[test]
    fn answers_and_acks_point_back_at_the_request() {
        let envelope = Envelope::from_value(request()).unwrap();
        let answer = envelope.answer("urn:asap:agent:switchboard", "task.response", Map::new());
        assert_eq!(answer.correlation_id.as_deref(), Some(envelope.id()));
        assert_eq!(answer.recipient, envelope.sender);
        assert_eq!(answer.trace_id, envelope.trace_id);
        let ack = envelope.ack("received", None);
        assert_eq!(ack.payload_type, "MessageAck");
        assert_eq!(ack.payload["original_envelope_id"], json!(envelope.id()));
        assert_eq!(ack.sender, envelope.recipient);
        assert_eq!(ack.recipient, envelope.sender);
        assert!(Envelope::from_value(serde_json::to_value(&ack).unwrap()).is_ok());
    }

    #[test]
    fn nonces_must_be_strings() {
        let mut value = request();
        value["extensions"] = json!({"nonce": 7});
        let envelope = Envelope::from_value(value).unwrap();
        assert!(matches!(
            envelope.nonce(),
            Err(AsapError::InvalidNonce { .. })
        ));
        let mut value = request();
        value["extensions"] = json!(null);
        assert_eq!(Envelope::from_value(value).unwrap().nonce().unwrap(), None);
    }
}
