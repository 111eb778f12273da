//! A demo worker for the agent task API (docs/TASKS.md): it claims tasks over the broker's
//! WebSocket and runs a scripted three-step task with one approval.
//!
//! ```text
//! cargo run --release                       # terminal 1: the broker, dev mode
//! cargo run --example task_worker           # terminal 2: this worker
//! # then submit, watch and approve with curl (README, "Agent tasks")
//! ```
//!
//! Steps: `plan` (progress 50 %, then done), `apply changes` (asks for approval first; a
//! rejection fails the task), `report`; then the task completes with a result. It also
//! answers `task.undo_request` (reports the step rolled back) and `task.cancel` (drops the
//! task). `SWITCHBOARD_URL` (default `ws://127.0.0.1:8000/ws`) and `SWITCHBOARD_TOKEN`
//! (default: a token signed with dev mode's public secret) choose the broker.
//!
//! It is written on the project's Rust client (`switchboard-client`), so it reconnects by
//! itself when the broker restarts; a task it was running then goes back to the queue when
//! its lease lapses, and the worker claims again.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use switchboard_client::{Client, Envelope, Options, Pushes, State, StateStream};

/// Bound on one request to the broker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Worker {
    client: Client,
    pushes: Pushes,
    states: StateStream,
    /// Pushes that arrived while waiting for another one, handled afterwards.
    pending: Vec<Envelope>,
}

impl Worker {
    /// A request to the task handlers; the reply's payload, or the broker's error.
    async fn send(&self, msg_type: &str, payload: Value) -> Result<Value, String> {
        let reply = self
            .client
            .request(msg_type, payload, REQUEST_TIMEOUT)
            .await
            .map_err(|e| format!("{msg_type}: {e}"))?;
        Ok(reply.payload.unwrap_or(Value::Null))
    }

    /// The next push; an error when the connection dropped meanwhile (what this worker
    /// waited for was registered on that connection).
    async fn next_push(&mut self) -> Result<Envelope, String> {
        tokio::select! {
            push = self.pushes.next() => push.ok_or_else(|| "the client closed".to_owned()),
            state = self.states.next() => match state {
                Some(State::Connected { .. }) | None => Err("reconnected".to_owned()),
                Some(other) => Err(format!("connection {other:?}")),
            },
        }
    }

    /// The next push of one of `types` about `task_id` (earlier arrivals first).
    async fn wait_for(&mut self, task_id: &str, types: &[&str]) -> Result<Envelope, String> {
        let matches = |m: &Envelope| {
            types.contains(&m.msg_type.as_str())
                && m.payload.as_ref().is_some_and(|p| p["taskId"] == task_id)
        };
        if let Some(i) = self.pending.iter().position(matches) {
            return Ok(self.pending.remove(i));
        }
        loop {
            let push = self.next_push().await?;
            if matches(&push) {
                return Ok(push);
            }
            self.pending.push(push);
        }
    }

    async fn step(&self, task_id: &str, name: &str) -> Result<(), String> {
        self.send(
            "task.step",
            json!({"taskId": task_id, "action": "start", "name": name}),
        )
        .await?;
        self.send(
            "task.progress",
            json!({"taskId": task_id, "progress": 50, "message": format!("{name}: halfway")}),
        )
        .await?;
        // Stands for the work; the lease is renewed by every message.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.send(
            "task.step",
            json!({"taskId": task_id, "action": "complete", "result": {"step": name}}),
        )
        .await?;
        Ok(())
    }

    /// Runs one task.
    async fn run(&mut self, task: &Value) -> Result<(), String> {
        let id = task["id"].as_str().unwrap_or_default().to_owned();
        log::info!("running {id}: {}", task["task"]);
        self.step(&id, "plan").await?;
        self.send(
            "task.step",
            json!({"taskId": id, "action": "start", "name": "apply changes"}),
        )
        .await?;
        let asked = self
            .send(
                "task.approval_request",
                json!({"taskId": id, "description": "apply the planned changes",
                       "parameters": {"files": 3}}),
            )
            .await?;
        log::info!("waiting for approval {}", asked["approvalId"]);
        let answer = self
            .wait_for(&id, &["task.approval_decision", "task.cancel"])
            .await?;
        if answer.msg_type == "task.cancel" {
            log::info!("{id} cancelled");
            return Ok(());
        }
        if answer.payload.as_ref().map(|p| &p["approved"]) != Some(&Value::Bool(true)) {
            self.send("task.step", json!({"taskId": id, "action": "fail"}))
                .await?;
            self.send(
                "task.fail",
                json!({"taskId": id, "error": "the user rejected the changes"}),
            )
            .await?;
            return Ok(());
        }
        self.send(
            "task.step",
            json!({"taskId": id, "action": "complete", "result": {"applied": 3}}),
        )
        .await?;
        self.step(&id, "report").await?;
        // Undo requests that came in meanwhile are answered before finishing.
        while let Some(i) = self
            .pending
            .iter()
            .position(|m| m.msg_type == "task.undo_request")
        {
            let undo = self.pending.remove(i);
            let step = undo.payload.map(|p| p["stepId"].clone());
            self.send(
                "task.undo",
                json!({"taskId": id, "stepId": step, "ok": true}),
            )
            .await?;
        }
        self.send(
            "task.complete",
            json!({"taskId": id, "result": {"summary": "3 files changed"}}),
        )
        .await?;
        log::info!("{id} completed");
        Ok(())
    }

    /// Claims the next task: at once if one is queued, else when the broker assigns one.
    async fn claim(&mut self) -> Result<Value, String> {
        let claimed = self.send("task.claim", json!({"wait": true})).await?;
        if !claimed["task"].is_null() {
            return Ok(claimed["task"].clone());
        }
        loop {
            let push = self.next_push().await?;
            if push.msg_type == "task.assigned" {
                return Ok(push.payload.map(|p| p["task"].clone()).unwrap_or_default());
            }
            self.pending.push(push);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let url = std::env::var("SWITCHBOARD_URL").unwrap_or_else(|_| "ws://127.0.0.1:8000/ws".into());
    let token = match std::env::var("SWITCHBOARD_TOKEN") {
        Ok(token) => token,
        Err(_) => switchboard::auth::mint_hs256(
            switchboard::config::DEV_HS256_SECRET,
            "demo-worker",
            Vec::new(),
            None,
            Duration::from_secs(24 * 3600),
        )
        .map_err(|e| e.to_string())?,
    };
    let client = Client::connect(&url, Options::with_token(token))
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let mut worker = Worker {
        pushes: client.pushes().map_err(|e| e.to_string())?,
        states: client.state_changes(),
        client,
        pending: Vec::new(),
    };
    log::info!("worker connected to {url}");
    loop {
        let result = match worker.claim().await {
            Ok(task) => worker.run(&task).await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            log::warn!("{err}");
            if let State::Closed { .. } = worker.client.state() {
                return Err(err);
            }
            // Pushes of the lost connection are stale; wait until connected again.
            worker.pending.clear();
            while !worker.client.state().is_connected() {
                match worker.states.next().await {
                    Some(State::Closed { reason, .. }) => return Err(reason),
                    None => return Err("the client closed".into()),
                    _ => {}
                }
            }
        }
    }
}
