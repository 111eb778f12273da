//! The `switchboard` binary as a newcomer uses it: `--config`, `--version`, `genconfig`,
//! `check-config` on the example file, `token`'s required flags, the start-up banner.

use crate::support::process;

use std::path::Path;
use std::process::Command;

use process::{free_port, BrokerProcess};

/// Runs the binary with `args` (no SWITCHBOARD_* from the environment); exit success and
/// everything it printed.
fn run(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args);
    for (var, _) in std::env::vars() {
        if var.starts_with("SWITCHBOARD_") {
            cmd.env_remove(var);
        }
    }
    let out = cmd.output().expect("run the switchboard binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

#[test]
fn version_and_help_name_every_command() {
    let (ok, out) = run(&["--version"]);
    assert!(ok && out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let (ok, out) = run(&["--help"]);
    assert!(ok, "{out}");
    for command in ["serve", "check-config", "genconfig", "token", "--config"] {
        assert!(
            out.contains(command),
            "{command} missing from --help: {out}"
        );
    }
}

#[test]
fn the_example_config_says_what_to_fill_and_genconfig_fills_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let copied = dir.path().join("copied.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"),
        &copied,
    )
    .expect("copy the example");
    let (ok, out) = run(&["check-config", path(&copied)]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("auth.hs256_secret") && out.contains("line") && out.contains("genconfig"),
        "names the key, its line and the way out: {out}"
    );
    let head: String = std::fs::read_to_string(&copied)
        .expect("read")
        .lines()
        .take(8)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        head.contains("auth.hs256_secret") && head.contains("api.keys"),
        "the first lines say which keys to fill: {head}"
    );

    let generated = dir.path().join("generated.toml");
    let (ok, out) = run(&["genconfig", path(&generated)]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["check-config", path(&generated)]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["--config", path(&generated), "check-config"]);
    assert!(ok, "--config works for check-config too: {out}");
    let (ok, out) = run(&["genconfig", path(&generated)]);
    assert!(!ok && out.contains("not overwriting"), "{out}");
    let (ok, out) = run(&["genconfig"]);
    assert!(ok && out.contains("hs256_secret = \""), "to stdout: {out}");
    // A token signed with the generated secret.
    let (ok, out) = run(&[
        "token",
        "--sub",
        "alice",
        "--room",
        "conversation:*",
        "--config",
        path(&generated),
    ]);
    assert!(ok && out.trim().split('.').count() == 3, "{out}");
}

#[test]
fn token_refuses_an_empty_sub_and_may_name_no_room() {
    let (ok, out) = run(&["token", "--sub", "", "--room", "r"]);
    assert!(!ok && out.contains("--sub"), "{out}");
    // Like an identity provider's token: a user, no rooms (endpoints with
    // access = "authenticated").
    let (ok, out) = run(&["token", "--sub", "alice"]);
    assert!(ok && out.trim().split('.').count() == 3, "{out}");
}

#[test]
fn an_out_of_range_port_says_so() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[server]\nbind = \"127.0.0.1:70000\"\n[auth]\nanonymous = true\n",
    )
    .expect("write");
    let (ok, out) = run(&["check-config", path(&config)]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("line 2") && out.contains("port 70000 is out of range"),
        "{out}"
    );
}

#[cfg(unix)]
#[actix_rt::test]
async fn config_at_the_top_level_serves_and_the_banner_lists_every_url() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let config = dir.path().join("switchboard.toml");
    let outbox = dir.path().join("outbox.db");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\n[auth]\nanonymous = true\n\
             [webhooks]\noutbox_path = {}\n",
            toml::Value::String(path(&outbox).to_owned())
        ),
    )
    .expect("write the config");
    // `switchboard --config F`, as the README shows it.
    let mut broker = BrokerProcess::spawn_args(&["--config"], &config, dir.path().join("log"));
    broker.wait_ready(&format!("http://127.0.0.1:{port}")).await;
    let log = broker.log();
    // Every URL the banner names answers (a WebSocket URL needs an upgrade).
    let client = awc::Client::new();
    for url in log.split_whitespace().filter(|w| w.starts_with("http://")) {
        let status = client.get(url).send().await.expect("request").status();
        assert!(status.is_success(), "{url}: {status}");
    }
    for line in [
        format!("switchboard {}", env!("CARGO_PKG_VERSION")),
        "engine: memory".to_owned(),
        format!("ws://127.0.0.1:{port}/ws"),
        format!("http://127.0.0.1:{port}/api"),
        format!("http://127.0.0.1:{port}/api/openapi.json"),
        format!("http://127.0.0.1:{port}/api/docs/"),
        format!("home       http://127.0.0.1:{port}/"),
        format!("http://127.0.0.1:{port}/metrics"),
        format!("http://127.0.0.1:{port}/healthz"),
        format!("outbox {}", outbox.display()),
        "RUST_LOG".to_owned(),
    ] {
        assert!(log.contains(&line), "banner lacks `{line}`:\n{log}");
    }
}
