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

use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

type Socket = Framed<BoxedSocket, Codec>;

struct Worker {
    ws: Socket,
    next_id: u64,
    /// Pushes that arrived while waiting for a reply, handled afterwards.
    pending: Vec<Value>,
}

impl Worker {
    async fn send(&mut self, msg_type: &str, payload: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = format!("w{}", self.next_id);
        let frame = json!({"type": msg_type, "id": id, "payload": payload}).to_string();
        self.ws
            .send(Message::Text(frame.into()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let msg = self.recv().await?;
            if msg["correlation_id"] == id {
                if msg["type"] == "system.error" {
                    return Err(format!("{msg_type}: {}", msg["payload"]));
                }
                return Ok(msg["payload"].clone());
            }
            self.pending.push(msg);
        }
    }

    async fn recv(&mut self) -> Result<Value, String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Frame::Text(bytes))) => {
                    let msg: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                    if msg["type"] == "system.ping" {
                        let pong = json!({"type": "system.pong"}).to_string();
                        let _ = self.ws.send(Message::Text(pong.into())).await;
                        continue;
                    }
                    return Ok(msg);
                }
                Some(Ok(Frame::Ping(p))) => {
                    let _ = self.ws.send(Message::Pong(p)).await;
                }
                Some(Ok(Frame::Close(reason))) => return Err(format!("closed: {reason:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("connection ended".into()),
            }
        }
    }

    /// The next push of `msg_type` about `task_id` (earlier arrivals first).
    async fn wait_for(&mut self, task_id: &str, types: &[&str]) -> Result<Value, String> {
        let matches = |m: &Value| {
            types.contains(&m["type"].as_str().unwrap_or_default())
                && m["payload"]["taskId"] == task_id
        };
        if let Some(i) = self.pending.iter().position(matches) {
            return Ok(self.pending.remove(i));
        }
        loop {
            let msg = self.recv().await?;
            if matches(&msg) {
                return Ok(msg);
            }
            self.pending.push(msg);
        }
    }

    async fn step(&mut self, task_id: &str, name: &str) -> Result<(), String> {
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
        actix_rt::time::sleep(Duration::from_millis(500)).await;
        self.send(
            "task.step",
            json!({"taskId": task_id, "action": "complete", "result": {"step": name}}),
        )
        .await?;
        Ok(())
    }

    /// Runs one task; `Ok(false)` when it was cancelled.
    async fn run(&mut self, task: &Value) -> Result<bool, String> {
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
        if answer["type"] == "task.cancel" {
            log::info!("{id} cancelled");
            return Ok(false);
        }
        if answer["payload"]["approved"] != true {
            self.send("task.step", json!({"taskId": id, "action": "fail"}))
                .await?;
            self.send(
                "task.fail",
                json!({"taskId": id, "error": "the user rejected the changes"}),
            )
            .await?;
            return Ok(true);
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
            .position(|m| m["type"] == "task.undo_request")
        {
            let undo = self.pending.remove(i);
            let step = undo["payload"]["stepId"].clone();
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
        Ok(true)
    }
}

#[actix_rt::main]
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
    let (_, ws) = awc::Client::new()
        .ws(format!("{url}?token={token}"))
        .connect()
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let mut worker = Worker {
        ws,
        next_id: 0,
        pending: Vec::new(),
    };
    log::info!("worker connected to {url}");
    loop {
        let claimed = worker.send("task.claim", json!({"wait": true})).await?;
        let task = if claimed["task"].is_null() {
            let assigned = loop {
                let msg = worker.recv().await?;
                if msg["type"] == "task.assigned" {
                    break msg;
                }
            };
            assigned["payload"]["task"].clone()
        } else {
            claimed["task"].clone()
        };
        if let Err(err) = worker.run(&task).await {
            log::warn!("task {}: {err}", task["id"]);
        }
    }
}
