//! A `redis-server` of the test's own, on a unix socket in a temporary directory: it never
//! touches the machine's Redis or its data, and stops when dropped.
//!
//! Without `redis-server` on `PATH` the tests that need it print a SKIP reason and pass,
//! unless `SWITCHBOARD_REQUIRE_REDIS=1` is set (CI, which installs it), which makes that a
//! failure.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long `redis-server` may take to say it is ready.
const STARTUP: Duration = Duration::from_secs(10);

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    persistent: bool,
}

impl RedisServer {
    /// Starts `redis-server`; `None` (after printing why) when it is not installed and not
    /// required.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(false)
    }

    /// Starts `redis-server` writing every change to its append-only file before answering
    /// (`appendfsync always`), so that a restart, even after SIGKILL, keeps everything it
    /// acknowledged.
    pub fn start_persistent() -> Option<RedisServer> {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            let required = std::env::var("SWITCHBOARD_REQUIRE_REDIS").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "SWITCHBOARD_REQUIRE_REDIS=1 but redis-server is not on PATH"
            );
            eprintln!("SKIP: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            child: None,
            dir,
            persistent,
        };
        server.restart();
        Some(server)
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL brokers use.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as with a
    /// network partition that sends no reset.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Stops the server (SIGKILL: what it holds is gone, as after a crash without
    /// persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts the server again on the same socket (empty, unless persistent) and waits
    /// until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let persistence: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed? apt-get install redis-server)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads the log for the readiness line, then drains it so the server never blocks.
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line
                    .to_ascii_lowercase()
                    .contains("ready to accept connections")
                {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        ready_rx
            .recv_timeout(STARTUP)
            .expect("redis-server ready within 10 s");
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
