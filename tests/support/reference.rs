//! Runs the Standard Webhooks reference library (PyPI `standardwebhooks`) through
//! `tests/support/standardwebhooks_verify.py`, so signatures are checked by code other than
//! ours. Shared by tests/webhook_signing.rs and tests/webhooks.rs.
//!
//! When python3 or the package is missing the caller gets `None` and a SKIP line is printed,
//! unless `SWITCHBOARD_REQUIRE_STANDARDWEBHOOKS=1` (CI), which makes that a failure.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use switchboard::webhooks::signing::WebhookSecret;

/// Exit status of the helper script when the package cannot be imported.
const EXIT_SKIP: i32 = 77;

/// Runs one request through the reference library; `None` means skip (reason printed).
pub fn reference(request: &Value) -> Option<Value> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let skip = |reason: String| {
        if std::env::var("SWITCHBOARD_REQUIRE_STANDARDWEBHOOKS").as_deref() == Ok("1") {
            panic!("SWITCHBOARD_REQUIRE_STANDARDWEBHOOKS=1 but: {reason}");
        }
        eprintln!("SKIP (reference verifier): {reason}");
        None
    };
    let script = format!(
        "{}/tests/support/standardwebhooks_verify.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut child = match Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return skip(format!("cannot run {python}: {e}")),
    };
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(request.to_string().as_bytes())
        .expect("write the request to the helper");
    let output = child.wait_with_output().expect("wait for the helper");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(EXIT_SKIP) {
        return skip(stderr.trim().trim_start_matches("SKIP: ").to_owned());
    }
    assert!(
        output.status.success(),
        "helper failed ({}): {stderr}",
        output.status
    );
    Some(serde_json::from_slice(&output.stdout).expect("the helper answers JSON"))
}

/// Headers as the helper's JSON object.
pub fn headers_json(headers: &[(String, String)]) -> Value {
    Value::Object(
        headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Verifies with the reference library: `Some(Ok(()))`, `Some(Err(message))`, or `None`
/// (skipped).
pub fn reference_verify(
    secret: &WebhookSecret,
    headers: &[(String, String)],
    body: &str,
) -> Option<Result<(), String>> {
    let answer = reference(&json!({
        "op": "verify",
        "secret": secret.expose_secret(),
        "headers": headers_json(headers),
        "body": body,
    }))?;
    Some(if answer["ok"] == json!(true) {
        Ok(())
    } else {
        Err(answer["error"].as_str().unwrap_or_default().to_owned())
    })
}
