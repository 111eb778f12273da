//! Interoperability of our webhook signatures with the Standard Webhooks reference verifier
//! (the `standardwebhooks` package from PyPI), driven through
//! `tests/support/standardwebhooks_verify.py`: it must accept what we sign and reject
//! tampering, and our `verify` must accept what it signs.
//!
//! When `python3` or the package is unavailable the tests print a SKIP reason and pass,
//! unless `SWITCHBOARD_REQUIRE_STANDARDWEBHOOKS=1` is set (CI), which makes that a failure.
//! `PYTHON` overrides the interpreter.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::reference;

use reference::{reference, reference_verify};
use serde_json::json;
use switchboard::webhooks::signing::{
    sign, verify, webhook_headers, VerifyError, WebhookSecret, DEFAULT_BODY_HMAC_HEADER,
};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sample_body() -> String {
    json!({
        "id": "evt_0b7c6f1e",
        "type": "room.message",
        "timestamp": "2025-01-01T12:00:00.000Z",
        "data": {"room": "conversation:42", "seq": 7, "payload": {"text": "héllo ✓ \"quoted\" \\ slash"}},
    })
    .to_string()
}

#[test]
fn reference_verifier_accepts_our_signatures_and_rejects_tampering() {
    let Some(version) = reference(&json!({"op": "version"})) else {
        return;
    };
    eprintln!("standardwebhooks (PyPI) version {}", version["version"]);

    let (current, previous) = (WebhookSecret::generate(), WebhookSecret::generate());
    let body = sample_body();
    let msg_id = "evt_0b7c6f1e";
    let ts = unix_now();
    let headers = webhook_headers(
        &[current.clone(), previous.clone()],
        Some(DEFAULT_BODY_HMAC_HEADER),
        msg_id,
        ts,
        body.as_bytes(),
    );

    // Accepted with either secret of a rotation, with our extra header present.
    for secret in [&current, &previous] {
        assert_eq!(reference_verify(secret, &headers, &body), Some(Ok(())));
    }
    // Single-secret signature, headers only.
    let single = webhook_headers(
        std::slice::from_ref(&current),
        None,
        msg_id,
        ts,
        body.as_bytes(),
    );
    assert_eq!(reference_verify(&current, &single, &body), Some(Ok(())));

    // Tampered body, id, timestamp; wrong secret: all rejected.
    let tampered_body = body.replace("seq\":7", "seq\":8");
    assert_ne!(tampered_body, body);
    let err = reference_verify(&current, &headers, &tampered_body)
        .unwrap()
        .unwrap_err();
    assert!(err.contains("No matching signature"), "{err}");

    let mut other_id = headers.clone();
    other_id[0].1 = "evt_other".to_owned();
    assert!(reference_verify(&current, &other_id, &body)
        .unwrap()
        .is_err());

    let mut other_ts = headers.clone();
    other_ts[1].1 = (ts - 1).to_string();
    assert!(reference_verify(&current, &other_ts, &body)
        .unwrap()
        .is_err());

    let stranger = WebhookSecret::generate();
    assert!(reference_verify(&stranger, &headers, &body)
        .unwrap()
        .is_err());

    // A correctly signed but stale delivery is refused by both verifiers.
    let stale_ts = ts - 600;
    let stale = webhook_headers(
        std::slice::from_ref(&current),
        None,
        msg_id,
        stale_ts,
        body.as_bytes(),
    );
    let err = reference_verify(&current, &stale, &body)
        .unwrap()
        .unwrap_err();
    assert!(err.contains("too old"), "{err}");
    assert!(matches!(
        verify(
            &current,
            (msg_id, &stale[1].1, &stale[2].1),
            body.as_bytes(),
            SystemTime::now()
        ),
        Err(VerifyError::TimestampTooOld { .. })
    ));
}

#[test]
fn our_verify_accepts_reference_signatures() {
    let body = sample_body();
    let msg_id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
    let ts = unix_now();
    let secrets = [
        WebhookSecret::generate(),
        WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
    ];
    for secret in &secrets {
        let Some(answer) = reference(&json!({
            "op": "sign",
            "secret": secret.expose_secret(),
            "msg_id": msg_id,
            "timestamp": ts,
            "body": body,
        })) else {
            return;
        };
        let theirs = answer["signature"].as_str().expect("a signature string");
        assert!(theirs.starts_with("v1,"), "{theirs}");
        // Byte-for-byte what we would send.
        assert_eq!(
            theirs,
            sign(std::slice::from_ref(secret), msg_id, ts, body.as_bytes())
        );

        let ts_header = ts.to_string();
        let now = SystemTime::now();
        assert_eq!(
            verify(secret, (msg_id, &ts_header, theirs), body.as_bytes(), now),
            Ok(())
        );
        assert_eq!(
            verify(secret, (msg_id, &ts_header, theirs), b"{}", now),
            Err(VerifyError::NoMatchingSignature)
        );
        let stranger = WebhookSecret::generate();
        assert_eq!(
            verify(
                &stranger,
                (msg_id, &ts_header, theirs),
                body.as_bytes(),
                now
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }
}
