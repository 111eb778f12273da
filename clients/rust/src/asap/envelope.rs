//! The ASAP envelope: one message, who sends it, to whom, what kind of payload.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The ASAP protocol version written into new envelopes (`asap_version`).
pub const ASAP_PROTOCOL_VERSION: &str = "0.1";

/// An ASAP message envelope: the `params.envelope` of `asap.send`, and the
/// `result.envelope` of its answer.
///
/// The fields are exactly the protocol's, so what this type writes is accepted by servers
/// that refuse unknown fields (switchboard and the `asap-protocol` Python package). Reading
/// is lenient: fields the protocol may add later are ignored. An empty `id` or `timestamp`
/// is left out when written, and the server fills it in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsapEnvelope {
    /// Unique id (the constructors set a fresh UUID).
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "String::is_empty"
    )]
    pub id: String,
    /// The protocol version the sender speaks ([`ASAP_PROTOCOL_VERSION`]).
    pub asap_version: String,
    /// RFC 3339 UTC time the envelope was built (the constructors set the current time).
    /// Servers refuse envelopes older than 5 minutes or more than 30 s ahead.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "String::is_empty"
    )]
    pub timestamp: String,
    /// The sender's agent URN, `urn:asap:agent:<name>` (`a-z`, `0-9`, `-`).
    pub sender: String,
    /// The recipient's agent URN.
    pub recipient: String,
    /// What the payload is: `task.request`, `task.response`, `task.update`, `MessageAck`, or
    /// an application's own type.
    pub payload_type: String,
    /// The message itself (always a JSON object).
    pub payload: Map<String, Value>,
    /// For an answer: the `id` of the envelope it answers. Required on `task.response`.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Distributed trace id, carried through unchanged.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Asks the server for an `asap.ack` on the WebSocket
    /// ([`AsapEvent::Ack`](crate::AsapEvent::Ack)).
    #[serde(default)]
    pub requires_ack: bool,
    /// Anything else, such as a replay-protection `nonce` (a string used once).
    #[serde(default)]
    pub extensions: Option<Map<String, Value>>,
}

impl AsapEnvelope {
    /// An envelope with a fresh id and the current time, from `sender` to `recipient`.
    pub fn new(
        sender: impl Into<String>,
        recipient: impl Into<String>,
        payload_type: impl Into<String>,
        payload: Map<String, Value>,
    ) -> AsapEnvelope {
        AsapEnvelope {
            id: new_id(),
            asap_version: ASAP_PROTOCOL_VERSION.to_owned(),
            timestamp: now_rfc3339(),
            sender: sender.into(),
            recipient: recipient.into(),
            payload_type: payload_type.into(),
            payload,
            correlation_id: None,
            trace_id: None,
            requires_ack: false,
            extensions: None,
        }
    }

    /// A `task.request` asking `recipient` to run the skill `skill_id` on `input`, in a
    /// conversation of its own. `input` must be a JSON object: servers refuse anything
    /// else (JSON-RPC error -32602).
    pub fn task_request(
        sender: impl Into<String>,
        recipient: impl Into<String>,
        skill_id: impl Into<String>,
        input: Value,
    ) -> AsapEnvelope {
        let mut payload = Map::new();
        payload.insert(
            "conversation_id".into(),
            Value::from(format!("conv-{}", new_id())),
        );
        payload.insert("skill_id".into(), Value::from(skill_id.into()));
        payload.insert("input".into(), input);
        AsapEnvelope::new(sender, recipient, "task.request", payload)
    }

    /// The envelope answering this one: from its recipient back to its sender, with
    /// `correlation_id` set to its id and the same trace id.
    pub fn reply(
        &self,
        payload_type: impl Into<String>,
        payload: Map<String, Value>,
    ) -> AsapEnvelope {
        let mut answer = AsapEnvelope::new(
            self.recipient.clone(),
            self.sender.clone(),
            payload_type,
            payload,
        );
        answer.asap_version = self.asap_version.clone();
        answer.correlation_id = Some(self.id.clone());
        answer.trace_id = self.trace_id.clone();
        answer
    }

    /// A completed `task.response` answering this envelope with `result`.
    pub fn task_response(&self, result: Value) -> AsapEnvelope {
        let mut payload = Map::new();
        payload.insert("task_id".into(), Value::from(format!("task-{}", new_id())));
        payload.insert("status".into(), Value::from("completed"));
        payload.insert("result".into(), result);
        self.reply("task.response", payload)
    }

    /// The skill a `task.request` asks for.
    pub fn skill_id(&self) -> Option<&str> {
        if normalized(&self.payload_type) != "taskrequest" {
            return None;
        }
        self.payload.get("skill_id").and_then(Value::as_str)
    }

    /// The `result` of a `task.response` (`None` for other payloads, or when absent).
    pub fn result(&self) -> Option<&Value> {
        if normalized(&self.payload_type) != "taskresponse" {
            return None;
        }
        self.payload.get("result")
    }

    /// Whether this is a `MessageAck`; [`AsapEnvelope::acknowledged_id`] says which
    /// envelope it acknowledges.
    pub fn is_ack(&self) -> bool {
        normalized(&self.payload_type) == "messageack"
    }

    /// For a `MessageAck`: the id of the envelope it acknowledges.
    pub fn acknowledged_id(&self) -> Option<&str> {
        if !self.is_ack() {
            return None;
        }
        self.payload
            .get("original_envelope_id")
            .and_then(Value::as_str)
    }
}

/// The key payload types are compared by, whatever the spelling (`task.request`,
/// `TaskRequest`, `task_request`): lower-case letters and digits.
fn normalized(payload_type: &str) -> String {
    payload_type
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn null_as_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The current time as RFC 3339 UTC with microseconds (`2026-12-03T16:00:00.123456Z`), as
/// the Python package writes it.
pub(crate) fn now_rfc3339() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(since.as_secs(), since.subsec_micros())
}

fn format_rfc3339(secs: u64, micros: u32) -> String {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29 (a leap day) 12:34:56 UTC.
        assert_eq!(
            format_rfc3339(1_709_210_096, 789),
            "2024-02-29T12:34:56.000789Z"
        );
        assert_eq!(
            format_rfc3339(4_102_444_799, 999_999),
            "2099-12-31T23:59:59.999999Z"
        );
        assert!(now_rfc3339().ends_with('Z'));
    }

    #[test]
    fn envelopes_write_exactly_the_protocol_fields() {
        let request = AsapEnvelope::task_request(
            "urn:asap:agent:a",
            "urn:asap:agent:b",
            "echo",
            json!({"q": 1}),
        );
        let written = serde_json::to_value(&request).unwrap();
        let mut fields: Vec<&str> = written
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
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
        assert_eq!(request.skill_id(), Some("echo"));
        assert_eq!(written["payload"]["input"], json!({"q": 1}));
        let read: AsapEnvelope = serde_json::from_value(written).unwrap();
        assert_eq!(read, request);
    }

    #[test]
    fn replies_point_back_and_reading_is_lenient() {
        let mut request =
            AsapEnvelope::task_request("urn:asap:agent:a", "urn:asap:agent:b", "s", json!({}));
        request.trace_id = Some("t".into());
        let answer = request.task_response(json!({"ok": true}));
        assert_eq!(answer.sender, request.recipient);
        assert_eq!(answer.recipient, request.sender);
        assert_eq!(answer.correlation_id.as_deref(), Some(request.id.as_str()));
        assert_eq!(answer.trace_id.as_deref(), Some("t"));
        assert_eq!(answer.result(), Some(&json!({"ok": true})));

        let ack: AsapEnvelope = serde_json::from_value(json!({
            "id": null, "asap_version": "0.1", "timestamp": null,
            "sender": "urn:asap:agent:s", "recipient": "urn:asap:agent:a",
            "payload_type": "MessageAck",
            "payload": {"original_envelope_id": "e1", "status": "received", "error": null},
            "a_later_field": 1
        }))
        .unwrap();
        assert!(ack.id.is_empty());
        assert_eq!(ack.acknowledged_id(), Some("e1"));
        let written = serde_json::to_value(&ack).unwrap();
        assert!(written.get("id").is_none(), "an empty id is left out");
    }
}
