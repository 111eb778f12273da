//! The TaskManager actor: the one owner of every unfinished task.
//!
//! It runs on an arbiter of its own and handles each command whole — checked against the
//! state machine and applied in memory — before the next one, so no two changes
//! interleave. A command's writes go to the store as one transaction ([`Commit`]), after
//! those of every earlier command; its caller is answered, and its events and messages to
//! workers are sent, only once that transaction is durable. The manager never waits for a
//! write, so a burst of commands is stored by one transaction, not one each.
//!
//! A commit that fails (the store is down) fails its command with 503, and the tasks it
//! touched are read back from the store, as after a restart; until the store answers,
//! commands on those tasks get 503 too. What it owns:
//!
//! - the queue (priority, then age), with positions and estimated waits;
//! - the workers: who holds which task, their leases (any `task.*` message renews one; a
//!   lapsed lease puts the task back in the queue) and the workers waiting for a task;
//! - approval requests and their deadlines;
//! - the events: every change becomes one event in the task's room `task:{id}`, published
//!   in order by one publisher task, which then wakes the long-polls waiting on it.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use lru::LruCache;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify};

use super::store::{StoreError, Stored, Write};
use super::{now_ms, room_of, Approval, Commit, LogEntry, Step, StoreThread, Task, TaskStatus};
use crate::actors::router::{HandlerError, HandlerRequest, Pusher, Reply};
use crate::actors::ConnectionId;
use crate::config::TasksConfig;
use crate::protocol::{frame, ErrorCode};
use crate::{Broker, ServerMessage};

/// The version of the event format (the `version` field of every event).
pub const EVENT_VERSION: u32 = 1;
/// The message type of task events in their room.
pub const EVENT_TYPE: &str = "task.event";

/// Why a task command failed; `src/http/tasks.rs` maps it to a status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// No such task (or approval, or step).
    #[error("{0}")]
    NotFound(String),
    /// The caller does not own the task.
    #[error("{0}")]
    Forbidden(String),
    /// The task's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A per-user limit.
    #[error("{0}")]
    TooMany(String),
    /// The store failed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for TaskError {
    fn from(err: StoreError) -> TaskError {
        log::error!("{err}");
        TaskError::Unavailable(err.to_string())
    }
}

impl From<TaskError> for HandlerError {
    fn from(err: TaskError) -> HandlerError {
        let code = match &err {
            TaskError::NotFound(_) => ErrorCode::NotFound,
            TaskError::Forbidden(_) => ErrorCode::Forbidden,
            TaskError::Conflict(_) => ErrorCode::Conflict,
            TaskError::Invalid(_) => ErrorCode::BadRequest,
            TaskError::TooMany(_) => ErrorCode::LimitExceeded,
            TaskError::Unavailable(_) => ErrorCode::Unavailable,
        };
        HandlerError::new(code, err.to_string())
    }
}

/// Who asks: a user (sees their own tasks) or a system (API key or admin token: all).
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The user id, or `key#<n>` / `admin:<sub>` for systems.
    pub name: String,
    /// Whether it may act on every task.
    pub system: bool,
}

impl Caller {
    /// Whether the caller may see and act on `task`.
    pub fn check(&self, task: &Task) -> Result<(), TaskError> {
        if self.system || task.owner == self.name {
            Ok(())
        } else {
            Err(TaskError::Forbidden(format!(
                "task {} is not yours",
                task.id
            )))
        }
    }
}

/// Which users own which tasks, for the join rule of `task:{id}` rooms: every unfinished
/// task and the most recently finished ones.
#[derive(Clone)]
pub struct TaskOwners(Arc<Mutex<LruCache<String, String>>>);

impl TaskOwners {
    /// Remembers up to `capacity` tasks.
    pub fn new(capacity: usize) -> TaskOwners {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        TaskOwners(Arc::new(Mutex::new(LruCache::new(cap))))
    }

    fn set(&self, task_id: &str, owner: &str) {
        let mut owners = self.0.lock().unwrap_or_else(|e| e.into_inner());
        owners.put(task_id.to_owned(), owner.to_owned());
    }

    /// The owner of `task_id`, if known.
    pub fn owner(&self, task_id: &str) -> Option<String> {
        let mut owners = self.0.lock().unwrap_or_else(|e| e.into_inner());
        owners.get(task_id).cloned()
    }
}

struct Held {
    connection: ConnectionId,
    push: Option<Pusher>,
    lease_until: Instant,
}

struct Live {
    task: Task,
    held: Option<Held>,
    steps: Vec<Step>,
    approvals: Vec<(Approval, Instant)>,
    position: Option<usize>,
}

struct Waiter {
    connection: ConnectionId,
    push: Pusher,
}

/// The actor.
pub struct TaskManager {
    store: StoreThread,
    /// The current command's writes and effects, committed when it is done.
    batch: Commit,
    /// Tasks a failed commit touched: forgotten in memory, read back from the store once it
    /// answers.
    unsynced: BTreeSet<String>,
    config: TasksConfig,
    owners: TaskOwners,
    live: HashMap<String, Live>,
    queue: BTreeSet<(Reverse<i64>, i64, String)>,
    waiters: VecDeque<Waiter>,
    durations: VecDeque<i64>,
    /// The queue changed since its positions were last announced.
    queue_dirty: bool,
    /// Ticks so far (waiting workers are probed every tenth).
    ticks: u64,
    events: mpsc::UnboundedSender<(String, Value)>,
    /// Taken by `started`, which runs the publisher on the manager's arbiter.
    publisher: Option<(Broker, mpsc::UnboundedReceiver<(String, Value)>)>,
    watchers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl TaskManager {
    /// A manager over `store`, publishing events through `broker`; puts every unfinished
    /// task back in the queue (a restart loses no task; running ones lost their worker).
    pub fn new(
        store: StoreThread,
        config: TasksConfig,
        owners: TaskOwners,
        broker: Broker,
    ) -> Result<TaskManager, StoreError> {
        let watchers: Arc<Mutex<HashMap<String, Arc<Notify>>>> = Arc::default();
        let (events, rx) = mpsc::unbounded_channel();
        let unfinished = store.call(|s| {
            let tasks = s.unfinished()?;
            let mut stored = Vec::with_capacity(tasks.len());
            for task in tasks {
                stored.extend(s.snapshot(&task.id, 0)?);
            }
            Ok(stored)
        })?;
        let mut manager = TaskManager {
            store,
            batch: Commit::default(),
            unsynced: BTreeSet::new(),
            config,
            owners,
            live: HashMap::new(),
            queue: BTreeSet::new(),
            waiters: VecDeque::new(),
            durations: VecDeque::new(),
            queue_dirty: false,
            ticks: 0,
            events,
            publisher: Some((broker, rx)),
            watchers,
        };
        for stored in unfinished {
            manager.requeue(stored, "the broker restarted");
        }
        // Stored before the broker serves: if this fails, the broker does not start.
        manager.commit_now()?;
        if !manager.live.is_empty() {
            log::info!(
                "tasks: {} unfinished task(s) back in the queue",
                manager.live.len()
            );
        }
        Ok(manager)
    }

    /// Puts a stored unfinished task back in the queue, as a restart does: one that was
    /// running lost its worker (and the approvals it asked for: the next worker asks again).
    fn requeue(&mut self, stored: Stored, why: &str) {
        let Stored {
            mut task,
            steps,
            mut approvals,
            ..
        } = stored;
        self.owners.set(&task.id, &task.owner);
        if task.status != TaskStatus::Pending {
            let previous = task.status;
            task.status = TaskStatus::Pending;
            task.worker = None;
            task.updated_at = now_ms();
            self.write(Write::UpdateTask(task.clone()));
            self.audit(&task.id, "broker", "requeue", json!({ "why": why }));
            for approval in approvals.iter_mut().filter(|a| a.status == "pending") {
                approval.status = "expired".into();
                approval.message = Some(why.into());
                approval.decided_at = Some(task.updated_at);
                self.write(Write::Approval {
                    task_id: task.id.clone(),
                    approval: approval.clone(),
                });
            }
            let mut data = Map::new();
            data.insert("status".into(), json!("pending"));
            data.insert("previousStatus".into(), json!(previous.as_str()));
            data.insert("message".into(), json!(format!("{why}; task re-queued")));
            self.emit(&task.id, "status_change", data);
        }
        self.enqueue(&task);
        self.live.insert(
            task.id.clone(),
            Live {
                approvals: approvals.into_iter().map(|a| (a, Instant::now())).collect(),
                task,
                held: None,
                steps,
                position: None,
            },
        );
    }

    fn write(&mut self, write: Write) {
        self.batch.writes.push(write);
    }

    fn audit(&mut self, task_id: &str, actor: &str, action: &str, detail: Value) {
        self.write(Write::Audit {
            task_id: task_id.to_owned(),
            at: now_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            detail,
        });
    }

    /// Runs `effect` once the current command's writes are durable.
    fn after_commit(&mut self, effect: impl FnOnce() + Send + 'static) {
        self.batch.effects.push(Box::new(effect));
    }

    /// Commits the current command's batch and waits for it (start-up and re-reads, where
    /// nothing else may happen in between); the effects run if it is stored.
    fn commit_now(&mut self) -> Result<(), StoreError> {
        let Commit { writes, effects } = std::mem::take(&mut self.batch);
        if !writes.is_empty() {
            self.store
                .call(move |s| s.apply(&writes.iter().collect::<Vec<_>>()))?;
        }
        for effect in effects {
            effect();
        }
        Ok(())
    }

    /// Commits the current command's batch without waiting, and answers `result` once it is
    /// durable, or 503 if it fails.
    fn answer<T, E>(&mut self, result: Result<T, E>) -> ResponseActFuture<Self, Result<T, E>>
    where
        T: 'static,
        E: From<TaskError> + 'static,
    {
        let Some((committed, touched)) = self.commit() else {
            return Box::pin(fut::ready(result));
        };
        Box::pin(committed.into_actor(self).map(move |outcome, act, _| {
            match outcome.unwrap_or_else(|_| Err(StoreError("the store thread has stopped".into())))
            {
                Ok(()) => result,
                Err(err) => {
                    act.lost(touched, &err);
                    Err(TaskError::from(err).into())
                }
            }
        }))
    }

    /// Like [`answer`](Self::answer), for work nobody waits on (the tick).
    fn commit_in_background(&mut self, ctx: &mut Context<Self>) {
        if let Some((committed, touched)) = self.commit() {
            ctx.spawn(committed.into_actor(self).map(move |outcome, act, _| {
                if let Err(err) = outcome
                    .unwrap_or_else(|_| Err(StoreError("the store thread has stopped".into())))
                {
                    act.lost(touched, &err);
                }
            }));
        }
    }

    /// Sends the batch to the store: how it went, and the tasks it touches.
    fn commit(&mut self) -> Option<(super::Committed, BTreeSet<String>)> {
        if self.batch.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut self.batch);
        let touched = batch
            .writes
            .iter()
            .map(|w| w.task_id().to_owned())
            .collect();
        Some((self.store.commit(batch), touched))
    }

    /// A commit failed: what memory holds of the tasks it touched may never have been
    /// stored, so it is dropped and read back from the store.
    fn lost(&mut self, touched: BTreeSet<String>, err: &StoreError) {
        log::error!(
            "tasks: a commit failed ({err}); re-reading {} task(s) from the store",
            touched.len()
        );
        for id in touched {
            if let Some(live) = self.live.remove(&id) {
                self.dequeue(&live.task);
            }
            self.unsynced.insert(id);
        }
        self.resync();
    }

    /// Reads the tasks a failed commit touched back from the store and puts the unfinished
    /// ones back in the queue; tries again on a later tick while the store does not answer.
    fn resync(&mut self) {
        if self.unsynced.is_empty() {
            return;
        }
        let ids: Vec<String> = self.unsynced.iter().cloned().collect();
        let read = self.store.call(move |s| {
            let mut found = Vec::new();
            for id in ids {
                found.extend(s.snapshot(&id, 0)?);
            }
            Ok(found)
        });
        let found = match read {
            Ok(found) => found,
            Err(err) => {
                log::warn!(
                    "tasks: {} task(s) wait for the store to answer: {err}",
                    self.unsynced.len()
                );
                return;
            }
        };
        let unsynced = std::mem::take(&mut self.unsynced);
        for stored in found.into_iter().filter(|s| !s.task.status.is_terminal()) {
            self.requeue(stored, "a store write failed");
        }
        if let Err(err) = self.commit_now() {
            log::warn!("tasks: re-queueing after a failed write: {err}");
            for id in &unsynced {
                if let Some(live) = self.live.remove(id) {
                    self.dequeue(&live.task);
                }
            }
            self.unsynced = unsynced;
        }
        self.queue_dirty = true;
    }

    fn enqueue(&mut self, task: &Task) {
        self.queue_dirty = true;
        self.queue
            .insert((Reverse(task.priority), task.created_at, task.id.clone()));
    }

    fn dequeue(&mut self, task: &Task) {
        self.queue_dirty = true;
        self.queue
            .remove(&(Reverse(task.priority), task.created_at, task.id.clone()));
    }

    /// Publishes an event `{version, id, type, data: {taskId, …}, timestamp}`.
    fn emit(&mut self, task_id: &str, kind: &str, mut data: Map<String, Value>) {
        data.insert("taskId".into(), json!(task_id));
        let event = json!({
            "version": EVENT_VERSION,
            "id": format!("evt_{}", frame::new_id()),
            "type": kind,
            "data": data,
            "timestamp": frame::now_rfc3339(),
        });
        let (events, task_id) = (self.events.clone(), task_id.to_owned());
        self.after_commit(move || {
            let _ = events.send((task_id, event));
        });
    }

    fn log(&mut self, task_id: &str, level: &str, message: String) {
        let entry = LogEntry {
            at: now_ms(),
            level: level.into(),
            message,
        };
        self.write(Write::Log {
            task_id: task_id.to_owned(),
            entry,
        });
    }

    /// Moves a live task to `next` (stored with the command); refused with 409 when the
    /// state machine does not allow it.
    fn transition(
        &mut self,
        task_id: &str,
        next: TaskStatus,
        change: impl FnOnce(&mut Task),
    ) -> Result<Task, TaskError> {
        let live = self
            .live
            .get_mut(task_id)
            .ok_or_else(|| TaskError::Conflict(format!("task {task_id} has finished")))?;
        let from = live.task.status;
        if !from.can_become(next) {
            return Err(TaskError::Conflict(format!(
                "task {task_id} is {} and cannot become {}",
                from.as_str(),
                next.as_str()
            )));
        }
        let mut task = live.task.clone();
        task.status = next;
        task.updated_at = now_ms();
        change(&mut task);
        live.task = task.clone();
        self.write(Write::UpdateTask(task.clone()));
        if next.is_terminal() {
            if let Some(live) = self.live.remove(task_id) {
                self.dequeue(&live.task);
            }
        }
        let mut data = Map::new();
        data.insert("status".into(), json!(next.as_str()));
        data.insert("previousStatus".into(), json!(from.as_str()));
        self.emit(task_id, "status_change", data);
        Ok(task)
    }

    /// Positions and estimated waits of queued tasks, announced where they changed (the
    /// first 100 positions: further back, a change of one place says nothing). Called from
    /// the tick, not on every change: one claim moves every queued task up one place, and
    /// announcing each move at once would multiply a burst of submits and claims by the
    /// queue's length.
    fn announce_queue(&mut self) {
        let ids: Vec<String> = self
            .queue
            .iter()
            .take(100)
            .map(|(_, _, id)| id.clone())
            .collect();
        for (position, id) in ids.into_iter().enumerate() {
            self.announce_position(&id, position);
        }
    }

    /// A `queue_update` for `id` at `position`, unless that was the last one announced.
    fn announce_position(&mut self, id: &str, position: usize) {
        let average = match self.durations.len() {
            0 => 30_000,
            n => self.durations.iter().sum::<i64>() / n as i64,
        };
        let workers = self
            .live
            .values()
            .filter(|l| l.held.is_some())
            .count()
            .max(self.waiters.len())
            .max(1) as i64;
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        if live.position == Some(position) {
            return;
        }
        live.position = Some(position);
        let mut data = Map::new();
        data.insert("queuePosition".into(), json!(position));
        data.insert(
            "estimatedWaitTime".into(),
            json!(average * (position as i64 + 1) / workers),
        );
        self.emit(id, "queue_update", data);
    }

    fn position(&self, task_id: &str) -> Option<usize> {
        self.queue.iter().position(|(_, _, id)| id == task_id)
    }

    /// Gives the next queued task to `connection`: running, leased, announced.
    fn assign(
        &mut self,
        connection: ConnectionId,
        push: Option<Pusher>,
    ) -> Result<Option<Task>, TaskError> {
        let Some((_, _, id)) = self.queue.first().cloned() else {
            return Ok(None);
        };
        let worker = connection.to_string();
        let task = self.transition(&id, TaskStatus::Running, |t| {
            t.worker = Some(worker);
            t.attempts += 1;
            t.started_at.get_or_insert(t.updated_at);
        })?;
        self.dequeue(&task);
        self.audit(&id, &format!("worker:{connection}"), "claim", json!({}));
        if let Some(live) = self.live.get_mut(&id) {
            live.position = None;
            live.held = Some(Held {
                connection,
                push,
                lease_until: Instant::now() + self.config.lease,
            });
        }
        self.queue_dirty = true;
        Ok(Some(task))
    }

    /// Hands queued tasks to waiting workers, oldest waiter first.
    fn feed_waiters(&mut self) {
        while !self.queue.is_empty() {
            let Some(waiter) = self.waiters.pop_front() else {
                return;
            };
            match self.assign(waiter.connection, Some(waiter.push.clone())) {
                Ok(Some(task)) => self.after_commit(move || {
                    let id = task.id.clone();
                    if !waiter
                        .push
                        .push(Reply::new("task.assigned", json!({ "task": task })))
                    {
                        // The worker is gone: the lease will put the task back.
                        log::info!("tasks: worker for {id} left before assignment");
                    }
                }),
                Ok(None) => return,
                Err(err) => {
                    log::warn!("tasks: assignment failed: {err}");
                    return;
                }
            }
        }
    }

    /// The live task `id` held by `connection` (worker messages), lease renewed.
    fn held_by(&mut self, id: &str, connection: &ConnectionId) -> Result<&mut Live, TaskError> {
        let lease = self.config.lease;
        self.check_synced(id)?;
        let live = self
            .live
            .get_mut(id)
            .ok_or_else(|| TaskError::NotFound(format!("task {id} is not running")))?;
        match &mut live.held {
            Some(held) if held.connection == *connection => {
                held.lease_until = Instant::now() + lease;
                Ok(live)
            }
            _ => Err(TaskError::Forbidden(format!(
                "task {id} is not held by this connection"
            ))),
        }
    }

    /// Sends `reply` to the worker holding `task_id`, once the command is stored.
    fn push_to_worker(&mut self, task_id: &str, reply: Reply) {
        if let Some(Held {
            push: Some(push), ..
        }) = self.live.get(task_id).and_then(|l| l.held.as_ref())
        {
            let push = push.clone();
            self.after_commit(move || {
                push.push(reply);
            });
        }
    }

    fn finish(&mut self, task: &Task) {
        if let Some(started) = task.started_at {
            self.durations.push_back(now_ms() - started);
            if self.durations.len() > 20 {
                self.durations.pop_front();
            }
        }
    }

    /// Lapsed leases go back to the queue; expired approvals are rejected.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(4) {
            self.resync();
        }
        let now = Instant::now();
        let lapsed: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| l.held.as_ref().is_some_and(|h| h.lease_until <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lapsed {
            match self.transition(&id, TaskStatus::Pending, |t| t.worker = None) {
                Ok(task) => {
                    if let Some(live) = self.live.get_mut(&id) {
                        live.held = None;
                    }
                    self.audit(&id, "broker", "requeue", json!({"why": "lease"}));
                    self.log(&id, "warn", "worker lease lapsed; task re-queued".into());
                    self.void_approvals(&id, "the worker was lost");
                    self.enqueue(&task);
                }
                Err(err) => log::warn!("tasks: requeue {id}: {err}"),
            }
        }
        let expired: Vec<(String, String)> = self
            .live
            .iter()
            .flat_map(|(id, l)| {
                l.approvals
                    .iter()
                    .filter(|(a, deadline)| a.status == "pending" && *deadline <= now)
                    .map(move |(a, _)| (id.clone(), a.id.clone()))
            })
            .collect();
        for (task_id, approval_id) in expired {
            let decision = Decision {
                approval_id,
                approved: false,
                message: Some("approval timed out".into()),
                modified_parameters: None,
            };
            if let Err(err) = self.decide(&task_id, decision, "broker", "expired") {
                log::warn!("tasks: expiring approval on {task_id}: {err}");
            }
        }
        // A waiting worker that went away is found by pushing to it.
        if self.ticks.is_multiple_of(10) {
            self.waiters
                .retain(|w| w.push.push(Reply::new("task.waiting", json!({}))));
        }
        self.feed_waiters();
        if std::mem::take(&mut self.queue_dirty) {
            self.announce_queue();
        }
        self.commit_in_background(ctx);
    }

    /// Records a decision on a pending approval, tells the worker, and resumes the task
    /// once nothing is left to decide.
    fn decide(
        &mut self,
        task_id: &str,
        decision: Decision,
        actor: &str,
        status: &str,
    ) -> Result<Approval, TaskError> {
        let live = self
            .live
            .get_mut(task_id)
            .ok_or_else(|| TaskError::Conflict(format!("task {task_id} has finished")))?;
        let Some((approval, _)) = live
            .approvals
            .iter_mut()
            .find(|(a, _)| a.id == decision.approval_id)
        else {
            return Err(TaskError::NotFound(format!(
                "no approval {} on task {task_id}",
                decision.approval_id
            )));
        };
        if approval.status != "pending" {
            return Err(TaskError::Conflict(format!(
                "approval {} was already {}",
                approval.id, approval.status
            )));
        }
        let mut decided = approval.clone();
        decided.status = status.into();
        decided.message = decision.message.clone();
        decided.modified_parameters = decision.modified_parameters.clone();
        decided.decided_at = Some(now_ms());
        self.write(Write::Approval {
            task_id: task_id.to_owned(),
            approval: decided.clone(),
        });
        self.audit(
            task_id,
            actor,
            "approval",
            json!({"approvalId": decided.id, "status": status}),
        );
        let live = self.live.get_mut(task_id).expect("found above");
        if let Some((a, _)) = live.approvals.iter_mut().find(|(a, _)| a.id == decided.id) {
            *a = decided.clone();
        }
        let still_pending = live.approvals.iter().any(|(a, _)| a.status == "pending");
        let awaiting = live.task.status == TaskStatus::AwaitingApproval;
        self.push_to_worker(
            task_id,
            Reply::new(
                "task.approval_decision",
                json!({
                    "taskId": task_id,
                    "approvalId": decided.id,
                    "approved": status == "approved",
                    "status": status,
                    "message": decided.message,
                    "modifiedParameters": decided.modified_parameters,
                }),
            ),
        );
        // Every tab sees the decision; the task resumes once nothing is left to decide.
        let mut data = Map::new();
        data.insert("approvalRequest".into(), json!(decided));
        data.insert(
            "status".into(),
            json!(self.live[task_id].task.status.as_str()),
        );
        if let Some(message) = &decided.message {
            data.insert("message".into(), json!(message));
        }
        self.emit(task_id, "status_change", data);
        if awaiting && !still_pending {
            self.transition(task_id, TaskStatus::Running, |_| {})?;
        }
        Ok(decided)
    }

    /// Expires the pending approvals of a task whose worker is gone: the next worker asks
    /// again if it needs to.
    fn void_approvals(&mut self, task_id: &str, why: &str) {
        let Some(live) = self.live.get_mut(task_id) else {
            return;
        };
        let mut voided = Vec::new();
        for (approval, _) in live
            .approvals
            .iter_mut()
            .filter(|(a, _)| a.status == "pending")
        {
            approval.status = "expired".into();
            approval.message = Some(why.into());
            approval.decided_at = Some(now_ms());
            voided.push(approval.clone());
        }
        for approval in voided {
            self.write(Write::Approval {
                task_id: task_id.to_owned(),
                approval,
            });
        }
    }

    /// A task, live or finished; 503 while a failed commit's task waits to be re-read.
    fn load(&mut self, id: &str) -> Result<Task, TaskError> {
        if let Some(live) = self.live.get(id) {
            return Ok(live.task.clone());
        }
        self.check_synced(id)?;
        let owned = id.to_owned();
        self.store
            .call(move |s| s.task(&owned))?
            .ok_or_else(|| TaskError::NotFound(format!("no task {id}")))
    }

    fn check_synced(&self, id: &str) -> Result<(), TaskError> {
        match self.unsynced.contains(id) {
            true => Err(TaskError::Unavailable(format!(
                "task {id} is being read back from the store after a failed write; try again"
            ))),
            false => Ok(()),
        }
    }
}

impl Actor for TaskManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some((broker, rx)) = self.publisher.take() {
            ctx.spawn(publish_events(broker, rx, self.watchers.clone()).into_actor(self));
        }
        ctx.run_interval(Duration::from_millis(500), |act, ctx| act.tick(ctx));
        self.announce_queue();
    }
}

/// The one task that publishes events, so a task's events enter its room in the order
/// they happened; then it wakes the long-polls on that task.
async fn publish_events(
    broker: Broker,
    mut events: mpsc::UnboundedReceiver<(String, Value)>,
    watchers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
) {
    while let Some((task_id, event)) = events.recv().await {
        let payload = match serde_json::value::to_raw_value(&event) {
            Ok(payload) => payload,
            Err(_) => continue,
        };
        let message = ServerMessage {
            msg_type: Some(EVENT_TYPE.into()),
            payload,
            id: event["id"].as_str().map(str::to_owned),
        };
        if let Err(err) = broker.publish(&room_of(&task_id), "tasks", message).await {
            log::error!("tasks: event for {task_id} not published: {err}");
        }
        let watcher = watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&task_id)
            .cloned();
        if let Some(notify) = watcher {
            notify.notify_waiters();
        }
    }
}

/// `POST /api/agent`.
#[derive(Message)]
#[rtype(result = "Result<(Task, Option<usize>), TaskError>")]
pub struct Submit {
    pub caller: Caller,
    pub owner: String,
    pub task: String,
    pub priority: i64,
    pub conversation_id: Option<String>,
    pub context: Value,
}

impl Handler<Submit> for TaskManager {
    type Result = ResponseActFuture<Self, Result<(Task, Option<usize>), TaskError>>;

    fn handle(&mut self, msg: Submit, _: &mut Self::Context) -> Self::Result {
        let result = self.submit(msg);
        self.answer(result)
    }
}

impl TaskManager {
    fn submit(&mut self, msg: Submit) -> Result<(Task, Option<usize>), TaskError> {
        let active = self
            .live
            .values()
            .filter(|l| l.task.owner == msg.owner)
            .count();
        if active >= self.config.max_active_per_user {
            return Err(TaskError::TooMany(format!(
                "{} has {active} unfinished tasks (tasks.max_active_per_user)",
                msg.owner
            )));
        }
        let now = now_ms();
        let task = Task {
            id: format!("task_{}", frame::new_id()),
            owner: msg.owner,
            task: msg.task,
            priority: msg.priority,
            conversation_id: msg.conversation_id,
            context: msg.context,
            status: TaskStatus::Pending,
            worker: None,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            attempts: 0,
        };
        self.write(Write::InsertTask(task.clone()));
        self.audit(
            &task.id,
            &msg.caller.name,
            "submit",
            json!({"priority": task.priority}),
        );
        self.owners.set(&task.id, &task.owner);
        self.enqueue(&task);
        self.live.insert(
            task.id.clone(),
            Live {
                task: task.clone(),
                held: None,
                steps: Vec::new(),
                approvals: Vec::new(),
                position: None,
            },
        );
        let mut data = Map::new();
        data.insert("status".into(), json!("pending"));
        self.emit(&task.id, "status_change", data);
        self.feed_waiters();
        let position = self.position(&task.id);
        // The new task learns its place at once; the rest of the queue at the next tick.
        if let Some(position) = position {
            self.announce_position(&task.id, position);
        }
        self.queue_dirty = true;
        let task = self.live.get(&task.id).map_or(task, |l| l.task.clone());
        Ok((task, position))
    }
}

/// What `GET /api/agent/{id}` shows.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    pub task: Task,
    pub steps: Vec<Step>,
    pub approvals: Vec<Approval>,
    pub logs: Vec<LogEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_execution: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
}

impl Detail {
    /// What the API shows of a stored task, at `queue_position` if it is queued.
    pub fn of(stored: Stored, queue_position: Option<usize>) -> Detail {
        let Stored {
            task,
            steps,
            approvals,
            logs,
        } = stored;
        let current_execution =
            steps.iter().rev().find(|s| s.status == "running").map(
                |s| json!({"step": s, "progress": s.progress, "status": task.status.as_str()}),
            );
        Detail {
            task,
            steps,
            approvals,
            logs,
            current_execution,
            queue_position,
        }
    }
}

/// Where a task is in the queue (`None`: not queued).
#[derive(Message)]
#[rtype(result = "Option<usize>")]
pub struct Position(pub String);

impl Handler<Position> for TaskManager {
    type Result = Option<usize>;

    fn handle(&mut self, msg: Position, _: &mut Self::Context) -> Self::Result {
        self.position(&msg.0)
    }
}

/// `DELETE /api/agent/{id}`.
#[derive(Message)]
#[rtype(result = "Result<Task, TaskError>")]
pub struct Cancel {
    pub caller: Caller,
    pub id: String,
}

impl Handler<Cancel> for TaskManager {
    type Result = ResponseActFuture<Self, Result<Task, TaskError>>;

    fn handle(&mut self, msg: Cancel, _: &mut Self::Context) -> Self::Result {
        let result = self.cancel(msg);
        self.answer(result)
    }
}

impl TaskManager {
    fn cancel(&mut self, msg: Cancel) -> Result<Task, TaskError> {
        let task = self.load(&msg.id)?;
        msg.caller.check(&task)?;
        let held = self.live.get(&msg.id).is_some_and(|l| l.held.is_some());
        if held {
            self.push_to_worker(
                &msg.id,
                Reply::new("task.cancel", json!({"taskId": msg.id})),
            );
        }
        let by = msg.caller.name.clone();
        let task = self.transition(&msg.id, TaskStatus::Cancelled, |t| {
            t.finished_at = Some(t.updated_at);
            t.worker = None;
            t.error = Some(format!("cancelled by {by}"));
        })?;
        self.audit(&task.id, &msg.caller.name, "cancel", json!({}));
        self.emit(&task.id, "cancelled", Map::new());
        self.queue_dirty = true;
        Ok(task)
    }
}

/// One decision on an approval request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Decision {
    /// The approval request.
    pub approval_id: String,
    /// Whether the step may go ahead.
    pub approved: bool,
    /// A word for the worker.
    #[serde(default)]
    pub message: Option<String>,
    /// Parameters the worker should use instead.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub modified_parameters: Option<Value>,
}

/// `POST /api/agent/{id}/approve` (one decision or several).
#[derive(Message)]
#[rtype(result = "Result<Vec<Approval>, TaskError>")]
pub struct Approve {
    pub caller: Caller,
    pub id: String,
    pub decisions: Vec<Decision>,
}

impl Handler<Approve> for TaskManager {
    type Result = ResponseActFuture<Self, Result<Vec<Approval>, TaskError>>;

    fn handle(&mut self, msg: Approve, _: &mut Self::Context) -> Self::Result {
        let result = self.approve(msg);
        self.answer(result)
    }
}

impl TaskManager {
    fn approve(&mut self, msg: Approve) -> Result<Vec<Approval>, TaskError> {
        let task = self.load(&msg.id)?;
        msg.caller.check(&task)?;
        // All checked before any is applied: a batch is decided whole or not at all.
        let live = self
            .live
            .get(&msg.id)
            .ok_or_else(|| TaskError::Conflict(format!("task {} has finished", msg.id)))?;
        for d in &msg.decisions {
            match live.approvals.iter().find(|(a, _)| a.id == d.approval_id) {
                None => {
                    return Err(TaskError::NotFound(format!(
                        "no approval {}",
                        d.approval_id
                    )))
                }
                Some((a, _)) if a.status != "pending" => {
                    return Err(TaskError::Conflict(format!(
                        "approval {} was already {}",
                        a.id, a.status
                    )))
                }
                Some(_) => {}
            }
        }
        msg.decisions
            .into_iter()
            .map(|d| {
                let status = if d.approved { "approved" } else { "rejected" };
                self.decide(&msg.id, d, &msg.caller.name, status)
            })
            .collect()
    }
}

/// `POST /api/agent/{id}/undo`.
#[derive(Message)]
#[rtype(result = "Result<String, TaskError>")]
pub struct Undo {
    pub caller: Caller,
    pub id: String,
    pub step_id: Option<String>,
}

impl Handler<Undo> for TaskManager {
    type Result = ResponseActFuture<Self, Result<String, TaskError>>;

    fn handle(&mut self, msg: Undo, _: &mut Self::Context) -> Self::Result {
        let result = self.undo(msg);
        self.answer(result)
    }
}

impl TaskManager {
    fn undo(&mut self, msg: Undo) -> Result<String, TaskError> {
        let task = self.load(&msg.id)?;
        msg.caller.check(&task)?;
        let live = self
            .live
            .get(&msg.id)
            .filter(|l| l.held.is_some())
            .ok_or_else(|| {
                TaskError::Conflict(format!(
                    "task {} is {}: no worker holds it to undo a step",
                    msg.id,
                    task.status.as_str()
                ))
            })?;
        let step = match &msg.step_id {
            Some(id) => live.steps.iter().find(|s| &s.id == id),
            None => live.steps.iter().rev().find(|s| s.status == "completed"),
        }
        .ok_or_else(|| TaskError::NotFound("no such completed step".into()))?;
        if step.status != "completed" {
            return Err(TaskError::Conflict(format!(
                "step {} is {}, not completed",
                step.id, step.status
            )));
        }
        let step_id = step.id.clone();
        self.audit(
            &msg.id,
            &msg.caller.name,
            "undo",
            json!({"stepId": step_id}),
        );
        self.push_to_worker(
            &msg.id,
            Reply::new(
                "task.undo_request",
                json!({"taskId": msg.id, "stepId": step_id}),
            ),
        );
        Ok(step_id)
    }
}

/// Ownership for the long-poll: the task's notifier, created on first use.
#[derive(Message)]
#[rtype(result = "Result<Arc<Notify>, TaskError>")]
pub struct Watch {
    pub caller: Caller,
    pub id: String,
}

impl Handler<Watch> for TaskManager {
    type Result = Result<Arc<Notify>, TaskError>;

    fn handle(&mut self, msg: Watch, _: &mut Self::Context) -> Self::Result {
        let task = self.load(&msg.id)?;
        msg.caller.check(&task)?;
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        // Notifiers of tasks nobody polls any more are dropped with their last poll.
        watchers.retain(|_, n| Arc::strong_count(n) > 1);
        Ok(watchers.entry(msg.id).or_default().clone())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkerMessage {
    task_id: Option<String>,
    step_id: Option<String>,
    name: Option<String>,
    action: Option<String>,
    progress: Option<i64>,
    message: Option<String>,
    result: Option<Value>,
    error: Option<String>,
    description: Option<String>,
    parameters: Option<Value>,
    group: Option<String>,
    wait: Option<bool>,
    ok: Option<bool>,
}

/// The worker protocol: `task.claim`, `task.step`, `task.progress`,
/// `task.approval_request`, `task.complete`, `task.fail`, `task.undo` (docs/TASKS.md).
impl Handler<HandlerRequest> for TaskManager {
    type Result = ResponseActFuture<Self, Result<Reply, HandlerError>>;

    fn handle(&mut self, req: HandlerRequest, _: &mut Self::Context) -> Self::Result {
        let result = self.work(req);
        self.answer(result)
    }
}

impl TaskManager {
    fn work(&mut self, req: HandlerRequest) -> Result<Reply, HandlerError> {
        let msg: WorkerMessage = serde_json::from_value(req.payload.clone()).map_err(|e| {
            HandlerError::new(ErrorCode::BadRequest, format!("invalid payload: {e}"))
        })?;
        if req.anonymous {
            return Err(HandlerError::new(
                ErrorCode::Unauthorized,
                "workers need a token",
            ));
        }
        // A worker reads and answers every user's tasks: admin tokens, and the subjects
        // `tasks.worker_subjects` names.
        let worker = req.admin
            || self
                .config
                .worker_subjects
                .iter()
                .any(|p| crate::glob::matches(p, &req.user));
        if !worker {
            return Err(HandlerError::new(
                ErrorCode::Forbidden,
                "this token may not work on tasks (an admin token, or a subject in tasks.worker_subjects)",
            ));
        }
        let conn = req.connection_id.clone();
        if req.msg_type == "task.claim" {
            return Ok(match self.assign(conn.clone(), req.push.clone())? {
                Some(task) => Reply::new("task.claimed", json!({"task": task})),
                None => {
                    if let (Some(true), Some(push)) = (msg.wait, req.push) {
                        self.waiters.push_back(Waiter {
                            connection: conn,
                            push,
                        });
                    }
                    Reply::new(
                        "task.claimed",
                        json!({"task": null, "waiting": msg.wait == Some(true)}),
                    )
                }
            });
        }
        let id = msg
            .task_id
            .clone()
            .ok_or_else(|| HandlerError::new(ErrorCode::BadRequest, "`taskId` is required"))?;
        self.held_by(&id, &conn)?;
        let worker = format!("worker:{conn}");
        match req.msg_type.as_str() {
            "task.step" => self.worker_step(&id, msg),
            "task.progress" => {
                let progress = msg.progress.unwrap_or(0).clamp(0, 100);
                let live = self.held_by(&id, &conn)?;
                let step = live.steps.iter_mut().rev().find(|s| {
                    s.status == "running" && msg.step_id.as_ref().is_none_or(|id| &s.id == id)
                });
                let Some(step) = step else {
                    return Err(TaskError::Conflict("no running step".into()).into());
                };
                step.progress = progress;
                let step = step.clone();
                self.write(Write::Step {
                    task_id: id.clone(),
                    step: step.clone(),
                });
                let mut data = Map::new();
                data.insert("step".into(), json!(step));
                data.insert("progress".into(), json!(progress));
                if let Some(message) = msg.message {
                    data.insert("message".into(), json!(message));
                }
                self.emit(&id, "step_progress", data);
                Ok(Reply::new("task.ok", json!({"taskId": id})))
            }
            "task.approval_request" => {
                let approval = Approval {
                    id: format!("appr_{}", frame::new_id()),
                    step_id: msg.step_id,
                    description: msg.description.unwrap_or_default(),
                    parameters: msg.parameters.unwrap_or(json!({})),
                    group: msg.group,
                    status: "pending".into(),
                    message: None,
                    modified_parameters: None,
                    created_at: now_ms(),
                    expires_at: now_ms() + self.config.approval_timeout.as_millis() as i64,
                    decided_at: None,
                };
                self.write(Write::Approval {
                    task_id: id.clone(),
                    approval: approval.clone(),
                });
                let deadline = Instant::now() + self.config.approval_timeout;
                if let Some(live) = self.live.get_mut(&id) {
                    live.approvals.push((approval.clone(), deadline));
                }
                if self.live[&id].task.status == TaskStatus::Running {
                    self.transition(&id, TaskStatus::AwaitingApproval, |_| {})?;
                }
                let mut data = Map::new();
                data.insert("approvalRequest".into(), json!(approval));
                self.emit(&id, "approval_request", data);
                Ok(Reply::new(
                    "task.ok",
                    json!({"taskId": id, "approvalId": approval.id}),
                ))
            }
            "task.complete" => {
                let result = msg.result.unwrap_or(Value::Null);
                let task = self.transition(&id, TaskStatus::Completed, |t| {
                    t.result = Some(result.clone());
                    t.finished_at = Some(t.updated_at);
                    t.worker = None;
                })?;
                self.finish(&task);
                self.audit(&id, &worker, "complete", json!({}));
                let mut data = Map::new();
                data.insert("result".into(), result);
                self.emit(&id, "completed", data);
                Ok(Reply::new("task.ok", json!({"taskId": id})))
            }
            "task.fail" => {
                let error = msg.error.unwrap_or_else(|| "failed".into());
                let task = self.transition(&id, TaskStatus::Failed, |t| {
                    t.error = Some(error.clone());
                    t.finished_at = Some(t.updated_at);
                    t.worker = None;
                })?;
                self.finish(&task);
                self.audit(&id, &worker, "fail", json!({"error": error}));
                self.log(&id, "error", error.clone());
                let mut data = Map::new();
                data.insert("message".into(), json!(error));
                self.emit(&id, "error", data);
                Ok(Reply::new("task.ok", json!({"taskId": id})))
            }
            "task.undo" => {
                let step_id = msg.step_id.ok_or_else(|| {
                    HandlerError::new(ErrorCode::BadRequest, "`stepId` is required")
                })?;
                let live = self.held_by(&id, &conn)?;
                let step = live
                    .steps
                    .iter_mut()
                    .find(|s| s.id == step_id)
                    .ok_or_else(|| TaskError::NotFound(format!("no step {step_id}")))?;
                if msg.ok != Some(false) {
                    step.status = "undone".into();
                }
                let step = step.clone();
                self.write(Write::Step {
                    task_id: id.clone(),
                    step: step.clone(),
                });
                self.audit(
                    &id,
                    &worker,
                    "undone",
                    json!({"stepId": step_id, "ok": msg.ok != Some(false)}),
                );
                let mut data = Map::new();
                data.insert("step".into(), json!(step));
                if let Some(message) = msg.message {
                    data.insert("message".into(), json!(message));
                }
                self.emit(&id, "step_complete", data);
                Ok(Reply::new("task.ok", json!({"taskId": id})))
            }
            other => Err(HandlerError::new(
                ErrorCode::UnknownType,
                format!("no handler for message type `{other}`"),
            )),
        }
    }
}

impl TaskManager {
    /// `task.step`: `action` `start` (a new step, named) or `complete` / `fail` (the given
    /// or the running step).
    fn worker_step(&mut self, id: &str, msg: WorkerMessage) -> Result<Reply, HandlerError> {
        let action = msg.action.as_deref().unwrap_or("start");
        let live = self
            .live
            .get_mut(id)
            .ok_or_else(|| TaskError::NotFound(format!("task {id} is not running")))?;
        if live.task.status != TaskStatus::Running {
            return Err(TaskError::Conflict(format!(
                "task {id} is {}: steps move only while it runs",
                live.task.status.as_str()
            ))
            .into());
        }
        let (step, kind) = match action {
            "start" => {
                let step = Step {
                    id: format!("step_{}", live.steps.len() + 1),
                    name: msg.name.unwrap_or_else(|| "step".into()),
                    status: "running".into(),
                    progress: 0,
                    result: None,
                    started_at: now_ms(),
                    finished_at: None,
                };
                live.steps.push(step.clone());
                (step, "step_start")
            }
            "complete" | "fail" => {
                let step = live
                    .steps
                    .iter_mut()
                    .rev()
                    .find(|s| {
                        s.status == "running" && msg.step_id.as_ref().is_none_or(|sid| &s.id == sid)
                    })
                    .ok_or_else(|| TaskError::Conflict("no running step".into()))?;
                step.status = if action == "complete" {
                    "completed"
                } else {
                    "failed"
                }
                .into();
                step.progress = if action == "complete" {
                    100
                } else {
                    step.progress
                };
                step.result = msg.result.clone();
                step.finished_at = Some(now_ms());
                (
                    step.clone(),
                    if action == "complete" {
                        "step_complete"
                    } else {
                        "error"
                    },
                )
            }
            other => {
                return Err(HandlerError::new(
                    ErrorCode::BadRequest,
                    format!("`action` `{other}`: use start, complete or fail"),
                ))
            }
        };
        self.write(Write::Step {
            task_id: id.to_owned(),
            step: step.clone(),
        });
        let mut data = Map::new();
        data.insert("step".into(), json!(step));
        if let Some(message) = msg.message {
            data.insert("message".into(), json!(message));
        }
        self.emit(id, kind, data);
        Ok(Reply::new(
            "task.ok",
            json!({"taskId": id, "stepId": step.id}),
        ))
    }
}
