//! The real `switchboard` binary as a child process, for tests that need a process of its
//! own: kill -9, start-up refusals, memory measured from outside.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Bound on start-up (process spawn to a 200 from /healthz).
pub const STARTUP: Duration = Duration::from_secs(10);

/// A broker process, SIGKILLed and reaped on drop (also when the test panics, when the end
/// of its log is printed).
pub struct BrokerProcess {
    child: Child,
    log: PathBuf,
}

impl BrokerProcess {
    /// `switchboard serve --config <config>`, output to `log`.
    pub fn spawn(config: &Path, log: PathBuf) -> BrokerProcess {
        Self::spawn_args(&["serve", "--config"], config, log)
    }

    /// `switchboard <args…> <config>`, output to `log`.
    pub fn spawn_args(args: &[&str], config: &Path, log: PathBuf) -> BrokerProcess {
        let out = File::create(&log).expect("create the broker log");
        let err = out.try_clone().expect("clone the log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args(args)
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // Only the file configures this broker (e.g. CI's SWITCHBOARD_REQUIRE_… is not ours).
        for (var, _) in std::env::vars() {
            if var.starts_with("SWITCHBOARD_") {
                cmd.env_remove(var);
            }
        }
        let child = cmd.spawn().expect("start the switchboard binary");
        BrokerProcess { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `GET /healthz` until 200, at most [`STARTUP`]; panics if the process exits.
    pub async fn wait_ready(&mut self, base: &str) {
        let deadline = Instant::now() + STARTUP;
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(1))
            .finish();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                panic!(
                    "the broker exited during start-up ({status}):\n{}",
                    log_tail(&self.log)
                );
            }
            if let Ok(resp) = client.get(format!("{base}/healthz")).send().await {
                if resp.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the broker was not ready within {STARTUP:?}:\n{}",
                log_tail(&self.log)
            );
            // Start-up polling only: nothing to wait on before the process listens.
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most [`STARTUP`]) for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not exit within {STARTUP:?}:\n{}",
                log_tail(&self.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the process, from /proc, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// SIGKILL (what `Child::kill` sends on unix) and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (end) ---\n{}",
                self.log.display(),
                log_tail(&self.log)
            );
        }
    }
}

/// The last 40 lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A port that was free a moment ago (bound to :0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
