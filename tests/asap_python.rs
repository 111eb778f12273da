//! The published ASAP packages against a real broker: the `asap-protocol` client
//! (`ASAPClient`, `WebSocketTransport`) through `tests/asap/real_client.py`, and the
//! `asap-compliance` validators plus the package's own compliance harness through
//! `tests/asap/compliance.py`.
//!
//! They need a Python ≥ 3.13 with the pinned packages (`tests/asap/requirements.txt`):
//! `SWITCHBOARD_ASAP_PYTHON` names its interpreter (`.ci/run` makes the venv). Without it
//! the tests print SKIP and pass, unless `SWITCHBOARD_REQUIRE_ASAP=1` (CI) makes that a
//! failure.

use crate::support;

use std::path::Path;
use std::process::Command;

use support::{test_config, TestBroker};

fn python() -> Option<String> {
    let required = std::env::var("SWITCHBOARD_REQUIRE_ASAP").as_deref() == Ok("1");
    let python = std::env::var("SWITCHBOARD_ASAP_PYTHON").ok();
    let usable = python.as_ref().is_some_and(|py| {
        Command::new(py)
            .args(["-c", "import asap, asap_compliance"])
            .status()
            .is_ok_and(|s| s.success())
    });
    match (usable, required) {
        (true, _) => python,
        (false, true) => panic!(
            "SWITCHBOARD_REQUIRE_ASAP=1 but SWITCHBOARD_ASAP_PYTHON ({python:?}) cannot import \
             asap and asap_compliance"
        ),
        (false, false) => {
            eprintln!(
                "SKIP: set SWITCHBOARD_ASAP_PYTHON to a Python ≥ 3.13 with \
                 tests/asap/requirements.txt installed"
            );
            None
        }
    }
}

/// A broker as the conformance runs expect it: anonymous agents, the echo skill.
fn broker() -> TestBroker {
    let mut config = test_config();
    config.auth.anonymous = true;
    config.router.allow_anonymous = true;
    config.asap.echo_skill = true;
    TestBroker::start(config)
}

fn run(python: &str, script: &str, broker: &TestBroker) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/asap")
        .join(script);
    let output = Command::new(python)
        .arg(&script)
        .arg(broker.http_url(""))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_real_client_works_over_websocket_and_http() {
    let Some(python) = python() else { return };
    let broker = broker();
    let out = run(&python, "real_client.py", &broker);
    assert!(out.contains("all passed"), "{out}");
    for check in [
        "every requires_ack envelope was acknowledged",
        "50 concurrent requests on one connection",
        "a handler's later message reaches on_message",
        "agent-to-agent request reaches B",
        "compressed 4 KiB envelope is read",
    ] {
        let passed = out
            .lines()
            .any(|line| line.starts_with("ok ") && line.contains(check));
        assert!(passed, "{check}: {out}");
    }
}

#[test]
fn the_compliance_validators_and_harness_pass() {
    let Some(python) = python() else { return };
    let broker = broker();
    let out = run(&python, "compliance.py", &broker);
    let summary = out
        .lines()
        .find_map(|l| l.strip_prefix("summary "))
        .unwrap_or_else(|| panic!("no summary: {out}"));
    eprintln!("compliance: {summary}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(summary.contains("(100%)"), "{summary}");
}
