//! Webhook signing for senders and verification for receivers.
//!
//! Every delivery carries the [Standard Webhooks](https://www.standardwebhooks.com) headers:
//!
//! - `webhook-id`: the delivery id (`msg_…`: one event to one endpoint), stable across
//!   retries (use it as an idempotency key; the body's `id` is the event id, `evt_…`);
//! - `webhook-timestamp`: the attempt time, integer unix seconds;
//! - `webhook-signature`: space-separated `v1,<base64>` entries, each the base64 of
//!   HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{raw body}`, one per secret (during
//!   a secret rotation the old and the new secret both sign).
//!
//! The HMAC key is the base64-*decoded* part of a `whsec_…` secret, not the string itself.
//! A receiver accepts when the timestamp is within [`TIMESTAMP_TOLERANCE`] of its clock and
//! any `v1` entry matches (compared in constant time); other versions (`v1a`, …) are ignored.
//!
//! Deliveries also carry a body-only HMAC header (default [`DEFAULT_BODY_HMAC_HEADER`]) with
//! the value `sha256=<lowercase hex HMAC-SHA256(key, body)>`, for receivers that only check
//! the body; it does not cover the id or timestamp, so prefer [`verify`].
//!
//! # Receiver example
//!
//! Verify the raw header values against the raw body bytes, *before* parsing the JSON:
//!
//! ```
//! use std::time::{SystemTime, UNIX_EPOCH};
//! use switchboard::webhooks::signing::{sign, verify, verify_body_hmac, body_hmac_header, WebhookSecret};
//!
//! // The endpoint's secret, as returned by `POST /api/webhooks`.
//! let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//!
//! // What the broker sends (normally done for you on every delivery).
//! let now = SystemTime::now();
//! let timestamp = now.duration_since(UNIX_EPOCH)?.as_secs();
//! let body = br#"{"id":"evt_1","type":"room.message","timestamp":"2025-01-01T00:00:00Z","data":{}}"#;
//! let signature = sign(std::slice::from_ref(&secret), "msg_1", timestamp, body);
//!
//! // The receiver: header values as received (use "" for a missing header).
//! let (id_header, ts_header, sig_header) = ("msg_1", timestamp.to_string(), signature);
//! verify(&secret, (id_header, &ts_header, &sig_header), body, SystemTime::now())?;
//!
//! // Tampering is detected.
//! assert!(verify(&secret, (id_header, &ts_header, &sig_header), b"{}", SystemTime::now()).is_err());
//!
//! // The body-only header, if that is all the receiver checks.
//! verify_body_hmac(&secret, &body_hmac_header(&secret, body), body)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a symmetric Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Name of the header carrying the event id.
pub const HEADER_WEBHOOK_ID: &str = "webhook-id";
/// Name of the header carrying the attempt time (unix seconds).
pub const HEADER_WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Name of the header carrying the `v1,<base64>` signatures.
pub const HEADER_WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// Default name of the body-only HMAC header (`sha256=<hex>`).
pub const DEFAULT_BODY_HMAC_HEADER: &str = "X-ASAP-Signature";
/// How far `webhook-timestamp` may be from the receiver's clock, either way.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Raw key bytes in a secret from [`WebhookSecret::generate`].
pub const GENERATED_KEY_LEN: usize = 24;
/// Smallest key the spec allows (192 bits).
pub const MIN_KEY_LEN: usize = 24;
/// Largest key the spec allows (512 bits).
pub const MAX_KEY_LEN: usize = 64;

/// Standard base64 that accepts the key with or without `=` padding (as the reference
/// libraries do), but nothing else: no URL-safe alphabet, no whitespace.
const SECRET_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A symmetric webhook signing secret: `whsec_` followed by the base64 of the raw key.
///
/// `Debug` shows only the key length, never the key.
#[derive(Clone, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct WebhookSecret {
    /// The secret as given (or generated), `whsec_…`.
    encoded: String,
    /// The decoded key bytes: the HMAC key.
    key: Vec<u8>,
}

/// Why a string is not a usable webhook secret. Never contains the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The string does not start with `whsec_`.
    #[error("webhook secret must start with \"whsec_\" followed by base64 (e.g. one returned by POST /api/webhooks)")]
    MissingPrefix,
    /// The part after `whsec_` is not standard base64.
    #[error("webhook secret: the part after \"whsec_\" is not valid standard base64")]
    InvalidBase64,
    /// The decoded key is shorter than [`MIN_KEY_LEN`] or longer than [`MAX_KEY_LEN`].
    #[error("webhook secret: key is {0} bytes, expected {MIN_KEY_LEN} to {MAX_KEY_LEN}")]
    BadLength(usize),
}

impl WebhookSecret {
    /// A fresh secret: `whsec_` + base64 of [`GENERATED_KEY_LEN`] bytes from the OS-seeded
    /// CSPRNG.
    pub fn generate() -> Self {
        let key: [u8; GENERATED_KEY_LEN] = rand::random();
        let encoded = format!("{SECRET_PREFIX}{}", STANDARD.encode(key));
        Self {
            encoded,
            key: key.to_vec(),
        }
    }

    /// Parses a `whsec_<base64>` secret (surrounding whitespace is ignored; padding is
    /// optional). The key must be 24 to 64 bytes, as the spec requires.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let s = s.trim();
        let b64 = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = SECRET_B64
            .decode(b64)
            .map_err(|_| SecretError::InvalidBase64)?;
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        Ok(Self {
            encoded: s.to_owned(),
            key,
        })
    }

    /// The full `whsec_…` string, to show once to the endpoint's owner or to store. Handle
    /// it as a credential.
    pub fn expose_secret(&self) -> &str {
        &self.encoded
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC-SHA256 accepts keys of any length")
    }

    fn signed_content_mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("key", &format_args!("<redacted, {} bytes>", self.key.len()))
            .finish()
    }
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for WebhookSecret {
    type Error = SecretError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

/// The `webhook-signature` header value: one `v1,<base64>` entry per secret, space-separated,
/// in the order given (current secret first during a rotation).
///
/// An empty `secrets` slice yields an empty string, which every verifier rejects.
pub fn sign(secrets: &[WebhookSecret], msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    secrets
        .iter()
        .map(|secret| {
            let tag = secret
                .signed_content_mac(msg_id, &timestamp, body)
                .finalize()
                .into_bytes();
            format!("v1,{}", STANDARD.encode(tag))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The body-HMAC header value: `sha256=<lowercase hex of HMAC-SHA256(key, body)>`.
pub fn body_hmac_header(secret: &WebhookSecret, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(body);
    format!("sha256={}", to_hex(&mac.finalize().into_bytes()))
}

/// Every signing header for one delivery attempt, as `(name, value)` pairs:
/// `webhook-id`, `webhook-timestamp`, `webhook-signature` and, when
/// `body_hmac_header_name` is `Some` and there is a secret, the body-HMAC header signed with
/// `secrets[0]` (the current secret).
pub fn webhook_headers(
    secrets: &[WebhookSecret],
    body_hmac_header_name: Option<&str>,
    msg_id: &str,
    timestamp: u64,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut headers = vec![
        (HEADER_WEBHOOK_ID.to_owned(), msg_id.to_owned()),
        (HEADER_WEBHOOK_TIMESTAMP.to_owned(), timestamp.to_string()),
        (
            HEADER_WEBHOOK_SIGNATURE.to_owned(),
            sign(secrets, msg_id, timestamp, body),
        ),
    ];
    if let (Some(name), Some(current)) = (body_hmac_header_name, secrets.first()) {
        headers.push((name.to_owned(), body_hmac_header(current, body)));
    }
    headers
}

/// Why a delivery did not verify. Never retryable: a receiver should answer `401`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A required header is missing or empty.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer number of unix seconds.
    #[error("invalid webhook-timestamp header: expected integer unix seconds")]
    InvalidTimestamp,
    /// `webhook-timestamp` is more than [`TIMESTAMP_TOLERANCE`] in the past.
    #[error("webhook-timestamp is {age_secs} s old, beyond the {} s tolerance (replay or clock skew)", TIMESTAMP_TOLERANCE.as_secs())]
    TimestampTooOld {
        /// How far behind the receiver's clock, in whole seconds.
        age_secs: u64,
    },
    /// `webhook-timestamp` is more than [`TIMESTAMP_TOLERANCE`] in the future.
    #[error("webhook-timestamp is {ahead_secs} s in the future, beyond the {} s tolerance (clock skew)", TIMESTAMP_TOLERANCE.as_secs())]
    TimestampTooNew {
        /// How far ahead of the receiver's clock, in whole seconds.
        ahead_secs: u64,
    },
    /// A signature header does not have the expected shape.
    #[error("malformed {header} header: {reason}")]
    MalformedHeader {
        /// Which header.
        header: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The header is well formed but no signature matches this secret, id, timestamp and body.
    #[error("no matching signature (wrong secret, or the id, timestamp or body was altered)")]
    NoMatchingSignature,
}

/// Verifies a Standard Webhooks delivery, for receivers.
///
/// `headers` are the raw values of `(webhook-id, webhook-timestamp, webhook-signature)`
/// (pass `""` for a missing one); `body` is the raw request body, byte for byte as received;
/// `now` is the receiver's clock (`SystemTime::now()`).
///
/// Checks, in order: all three headers present; the timestamp is integer unix seconds within
/// [`TIMESTAMP_TOLERANCE`] of `now`; the signature header is a space-separated list of
/// `version,signature` entries; any `v1` entry equals the expected HMAC (constant-time
/// comparison). Entries of other versions (e.g. `v1a`) are ignored.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use switchboard::webhooks::signing::{sign, verify, VerifyError, WebhookSecret};
///
/// let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
/// let sig = sign(&[new.clone(), old.clone()], "msg_1", 1_700_000_000, b"{}");
/// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_060);
/// // During a rotation the receiver may hold either secret.
/// assert_eq!(verify(&old, ("msg_1", "1700000000", &sig), b"{}", now), Ok(()));
/// assert_eq!(verify(&new, ("msg_1", "1700000000", &sig), b"{}", now), Ok(()));
/// let later = now + Duration::from_secs(3600);
/// assert!(matches!(
///     verify(&new, ("msg_1", "1700000000", &sig), b"{}", later),
///     Err(VerifyError::TimestampTooOld { .. })
/// ));
/// ```
pub fn verify(
    secret: &WebhookSecret,
    headers: (&str, &str, &str),
    body: &[u8],
    now: SystemTime,
) -> Result<(), VerifyError> {
    let (msg_id, timestamp, signature_header) = headers;
    let timestamp = timestamp.trim();
    let signature_header = signature_header.trim();
    if msg_id.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_WEBHOOK_ID));
    }
    if timestamp.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_WEBHOOK_TIMESTAMP));
    }
    if signature_header.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_WEBHOOK_SIGNATURE));
    }

    check_timestamp(timestamp, now)?;

    let malformed = |reason| VerifyError::MalformedHeader {
        header: HEADER_WEBHOOK_SIGNATURE,
        reason,
    };
    // Parse everything first, so the outcome does not depend on the order of the entries.
    let mut candidates = Vec::new();
    for entry in signature_header.split_ascii_whitespace() {
        let (version, signature) = entry
            .split_once(',')
            .ok_or(malformed("an entry is not of the form version,signature"))?;
        if version.is_empty() || signature.is_empty() {
            return Err(malformed("an entry has an empty version or signature"));
        }
        if version == "v1" {
            let bytes = STANDARD
                .decode(signature)
                .map_err(|_| malformed("a v1 signature is not valid base64"))?;
            candidates.push(bytes);
        }
    }

    let expected = secret.signed_content_mac(msg_id, timestamp, body);
    // `verify_slice` compares in constant time (length is not secret).
    let mut matched = false;
    for candidate in &candidates {
        matched |= expected.clone().verify_slice(candidate).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

/// Verifies the body-HMAC header (`sha256=<hex>`, hex in either case) against the raw body,
/// in constant time. It covers only the body: no replay protection; prefer [`verify`].
pub fn verify_body_hmac(
    secret: &WebhookSecret,
    header_value: &str,
    body: &[u8],
) -> Result<(), VerifyError> {
    const HEADER: &str = "body-HMAC";
    let value = header_value.trim();
    if value.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER));
    }
    let hex = value
        .strip_prefix("sha256=")
        .ok_or(VerifyError::MalformedHeader {
            header: HEADER,
            reason: "expected sha256=<hex>",
        })?;
    let tag = from_hex(hex).ok_or(VerifyError::MalformedHeader {
        header: HEADER,
        reason: "the digest is not valid hex",
    })?;
    let mut mac = secret.mac();
    mac.update(body);
    mac.verify_slice(&tag)
        .map_err(|_| VerifyError::NoMatchingSignature)
}

/// Parses `webhook-timestamp` (ASCII digits only) and checks it against the tolerance.
fn check_timestamp(timestamp: &str, now: SystemTime) -> Result<(), VerifyError> {
    if !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::InvalidTimestamp);
    }
    let secs: u64 = timestamp
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    let Some(sent_at) = UNIX_EPOCH.checked_add(Duration::from_secs(secs)) else {
        return Err(VerifyError::InvalidTimestamp);
    };
    match now.duration_since(sent_at) {
        Ok(age) if age > TIMESTAMP_TOLERANCE => Err(VerifyError::TimestampTooOld {
            age_secs: age.as_secs(),
        }),
        Ok(_) => Ok(()),
        Err(ahead) if ahead.duration() > TIMESTAMP_TOLERANCE => Err(VerifyError::TimestampTooNew {
            ahead_secs: ahead.duration().as_secs(),
        }),
        Err(_) => Ok(()),
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The known-answer vector of the Standard Webhooks reference libraries; the expected
    // values were computed with the Python reference package `standardwebhooks` 1.1.0
    // (`Webhook(SECRET).sign(MSG_ID, datetime.fromtimestamp(TS, timezone.utc), BODY)`) and
    // `hmac.new(key, BODY, sha256).hexdigest()`.
    const KAT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const KAT_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const KAT_TS: u64 = 1_614_265_330;
    const KAT_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const KAT_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const KAT_BODY_HMAC: &str =
        "sha256=e2cb4f5251572539d458bfb8a7adb533b08801e6a794467e06f771debbb0818b";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn kat_secret() -> WebhookSecret {
        WebhookSecret::parse(KAT_SECRET).unwrap()
    }

    #[test]
    fn known_answer_vector() {
        let secret = kat_secret();
        assert_eq!(
            sign(std::slice::from_ref(&secret), KAT_MSG_ID, KAT_TS, KAT_BODY),
            KAT_SIGNATURE
        );
        assert_eq!(body_hmac_header(&secret, KAT_BODY), KAT_BODY_HMAC);
        let ts = KAT_TS.to_string();
        assert_eq!(
            verify(
                &secret,
                (KAT_MSG_ID, &ts, KAT_SIGNATURE),
                KAT_BODY,
                at(KAT_TS)
            ),
            Ok(())
        );
        assert_eq!(verify_body_hmac(&secret, KAT_BODY_HMAC, KAT_BODY), Ok(()));
        assert_eq!(
            verify_body_hmac(
                &secret,
                &KAT_BODY_HMAC.to_uppercase().replace("SHA256=", "sha256="),
                KAT_BODY
            ),
            Ok(())
        );
    }

    #[test]
    fn round_trip_with_generated_secret() {
        let secret = WebhookSecret::generate();
        assert!(secret.expose_secret().starts_with("whsec_"));
        // 24 bytes -> 32 base64 characters, no padding.
        assert_eq!(secret.expose_secret().len(), "whsec_".len() + 32);
        let reparsed = WebhookSecret::parse(secret.expose_secret()).unwrap();
        let body = "{\"text\":\"héllo ✓\"}".as_bytes();
        let sig = sign(&[reparsed], "evt_1", 1_700_000_000, body);
        assert_eq!(
            verify(
                &secret,
                ("evt_1", "1700000000", &sig),
                body,
                at(1_700_000_000)
            ),
            Ok(())
        );
        assert_ne!(
            WebhookSecret::generate().expose_secret(),
            secret.expose_secret()
        );
    }

    #[test]
    fn rotation_either_secret_verifies() {
        let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
        let sig = sign(&[new.clone(), old.clone()], "evt_1", 1000, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|e| e.starts_with("v1,")));
        for s in [&old, &new] {
            assert_eq!(verify(s, ("evt_1", "1000", &sig), b"{}", at(1000)), Ok(()));
        }
        let other = WebhookSecret::generate();
        assert_eq!(
            verify(&other, ("evt_1", "1000", &sig), b"{}", at(1000)),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn other_versions_are_ignored() {
        let secret = kat_secret();
        let ts = KAT_TS.to_string();
        let header = format!("v1a,aGVsbG8= v2,whatever {KAT_SIGNATURE}");
        assert_eq!(
            verify(&secret, (KAT_MSG_ID, &ts, &header), KAT_BODY, at(KAT_TS)),
            Ok(())
        );
        assert_eq!(
            verify(
                &secret,
                (KAT_MSG_ID, &ts, "v1a,aGVsbG8="),
                KAT_BODY,
                at(KAT_TS)
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn tampering_is_rejected() {
        let secret = kat_secret();
        let ts = KAT_TS.to_string();
        let now = at(KAT_TS);
        let cases: [(&str, &str, &[u8]); 4] = [
            (KAT_MSG_ID, &ts, br#"{"test": 2432232315}"#),
            ("msg_p5jXN8AQM9LWM0D4loKWxJel", &ts, KAT_BODY),
            (KAT_MSG_ID, "1614265331", KAT_BODY),
            (KAT_MSG_ID, &ts, b""),
        ];
        for (id, ts, body) in cases {
            assert_eq!(
                verify(&secret, (id, ts, KAT_SIGNATURE), body, now),
                Err(VerifyError::NoMatchingSignature),
                "id={id} ts={ts}"
            );
        }
        // A flipped bit in the signature itself.
        let bad = KAT_SIGNATURE.replace("g0hM", "g0hN");
        assert_eq!(
            verify(&secret, (KAT_MSG_ID, &ts, &bad), KAT_BODY, now),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify_body_hmac(&secret, KAT_BODY_HMAC, b"{}"),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn timestamp_tolerance_both_ways() {
        let secret = kat_secret();
        let ts = KAT_TS.to_string();
        let check = |now| verify(&secret, (KAT_MSG_ID, &ts, KAT_SIGNATURE), KAT_BODY, now);
        // Exactly at the edge is still accepted, as in the reference libraries.
        assert_eq!(check(at(KAT_TS + 300)), Ok(()));
        assert_eq!(check(at(KAT_TS - 300)), Ok(()));
        assert_eq!(
            check(at(KAT_TS + 301)),
            Err(VerifyError::TimestampTooOld { age_secs: 301 })
        );
        assert_eq!(
            check(at(KAT_TS - 301)),
            Err(VerifyError::TimestampTooNew { ahead_secs: 301 })
        );
        assert!(matches!(
            check(at(KAT_TS + 86_400)),
            Err(VerifyError::TimestampTooOld { .. })
        ));
    }

    #[test]
    fn missing_and_invalid_headers_are_rejected() {
        let secret = kat_secret();
        let ts = KAT_TS.to_string();
        let now = at(KAT_TS);
        let v = |id: &str, ts: &str, sig: &str| verify(&secret, (id, ts, sig), KAT_BODY, now);
        assert_eq!(
            v("", &ts, KAT_SIGNATURE),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            v(KAT_MSG_ID, "", KAT_SIGNATURE),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            v(KAT_MSG_ID, &ts, "  "),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        for bad_ts in [
            "abc",
            "-1614265330",
            "+1614265330",
            "1614265330.0",
            "1e9",
            "99999999999999999999999",
        ] {
            assert_eq!(
                v(KAT_MSG_ID, bad_ts, KAT_SIGNATURE),
                Err(VerifyError::InvalidTimestamp),
                "{bad_ts}"
            );
        }
        for bad_sig in [
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1",
            "v1,",
            ",abc",
            "v1,not*base64",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",
        ] {
            assert!(
                matches!(
                    v(KAT_MSG_ID, &ts, bad_sig),
                    Err(VerifyError::MalformedHeader {
                        header: "webhook-signature",
                        ..
                    })
                ),
                "{bad_sig}"
            );
        }
        // A well-formed entry of the wrong length simply does not match.
        assert_eq!(
            v(KAT_MSG_ID, &ts, "v1,aGVsbG8="),
            Err(VerifyError::NoMatchingSignature)
        );
        for bad_body_header in ["", "e2cb", "sha1=e2cb", "sha256=xyz", "sha256=abc"] {
            assert!(
                verify_body_hmac(&secret, bad_body_header, KAT_BODY).is_err(),
                "{bad_body_header}"
            );
        }
    }

    #[test]
    fn secret_parsing() {
        // Padded and unpadded base64 decode to the same key.
        let padded = WebhookSecret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==").unwrap();
        let unpadded = WebhookSecret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_eq!(padded.key, unpadded.key);
        assert_eq!(padded.key.len(), 25);
        assert_eq!(
            WebhookSecret::parse(" whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
                .unwrap()
                .expose_secret(),
            KAT_SECRET
        );
        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert_eq!(
            WebhookSecret::parse("whsec_not base64!").unwrap_err(),
            SecretError::InvalidBase64
        );
        assert_eq!(
            WebhookSecret::parse("whsec_aGVsbG8=").unwrap_err(),
            SecretError::BadLength(5)
        );
        assert_eq!(
            WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 65]))).unwrap_err(),
            SecretError::BadLength(65)
        );
        assert!(WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 64]))).is_ok());
        assert_eq!(
            "whsec_".parse::<WebhookSecret>().unwrap_err(),
            SecretError::BadLength(0)
        );
        let from_json: WebhookSecret = serde_json::from_str(&format!("\"{KAT_SECRET}\"")).unwrap();
        assert_eq!(from_json.key, kat_secret().key);
        assert!(serde_json::from_str::<WebhookSecret>("\"nope\"").is_err());
        // Error messages never echo the input.
        let msg = WebhookSecret::parse("sk_live_supersecretvalue")
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("supersecret"), "{msg}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let secret = kat_secret();
        let debug = format!("{secret:?} {:#?}", std::slice::from_ref(&secret));
        assert!(
            !debug.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "{debug}"
        );
        assert!(!debug.contains("whsec_"), "{debug}");
        assert!(debug.contains("redacted, 24 bytes"), "{debug}");
    }

    #[test]
    fn headers_for_a_delivery() {
        let (current, previous) = (kat_secret(), WebhookSecret::generate());
        let headers = webhook_headers(
            &[current.clone(), previous.clone()],
            Some(DEFAULT_BODY_HMAC_HEADER),
            KAT_MSG_ID,
            KAT_TS,
            KAT_BODY,
        );
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature",
                "X-ASAP-Signature"
            ]
        );
        assert_eq!(headers[0].1, KAT_MSG_ID);
        assert_eq!(headers[1].1, "1614265330");
        assert!(headers[2].1.starts_with(&format!("{KAT_SIGNATURE} v1,")));
        assert_eq!(headers[3].1, KAT_BODY_HMAC);
        for s in [&current, &previous] {
            assert_eq!(
                verify(
                    s,
                    (&headers[0].1, &headers[1].1, &headers[2].1),
                    KAT_BODY,
                    at(KAT_TS)
                ),
                Ok(())
            );
        }

        let custom = webhook_headers(&[current], Some("X-Sig"), "m", 1, b"");
        assert_eq!(custom[3].0, "X-Sig");
        assert_eq!(webhook_headers(&[previous], None, "m", 1, b"").len(), 3);
        // No secret: an empty signature, which no verifier accepts, and no body header.
        let unsigned = webhook_headers(&[], Some(DEFAULT_BODY_HMAC_HEADER), "m", 1, b"");
        assert_eq!(unsigned.len(), 3);
        assert_eq!(unsigned[2].1, "");
    }

    #[test]
    fn hex_round_trip() {
        let bytes: Vec<u8> = (0..=255).collect();
        let hex = to_hex(&bytes);
        assert_eq!(&hex[..8], "00010203");
        assert_eq!(&hex[hex.len() - 4..], "feff");
        assert_eq!(from_hex(&hex).unwrap(), bytes);
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
