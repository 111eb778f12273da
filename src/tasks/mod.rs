//! Agent tasks: a user submits a task, a worker agent claims it and runs it step by step,
//! asks the user to approve risky steps, and the user watches it live.
//!
//! - [`TaskStatus`]: the state machine; every change goes through [`TaskStatus::can_become`].
//! - `store::TaskStore`: where tasks, steps, approvals, logs and the audit trail live
//!   (SQLite by default).
//! - `manager`: the TaskManager actor: the queue, worker leases, approval deadlines, and
//!   the task's events, published into its room `task:{id}` (so history, resume,
//!   back-pressure, webhooks and scale-out apply to them as to any room).
//! - The HTTP routes (`/api/agent`) are in `src/http/tasks.rs`; workers speak `task.*`
//!   message types over protocol v1 (docs/TASKS.md).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) mod manager;
pub(crate) mod postgres;
pub(crate) mod store;
mod store_thread;

pub(crate) use store_thread::{Commit, Committed, ReadPool, StoreThread};

/// How many read connections the API's reads use (each on a thread of its own).
fn read_connections() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// The configured store, opened on a thread of its own for the TaskManager's writes, and
/// read connections on threads of their own for the API's reads (so a read never waits
/// behind the manager's queue of commands, nor behind a burst of other reads). An
/// in-memory SQLite store (`sqlite_path = ""`) cannot be opened twice: its reads share the
/// writer's thread. The error names the config key.
pub(crate) fn open_store(
    config: &crate::config::TasksConfig,
) -> Result<(StoreThread, ReadPool), crate::config::ConfigError> {
    use crate::config::TaskStoreKind;
    let in_memory = config.store == TaskStoreKind::Sqlite && config.sqlite_path.is_empty();
    let opened = open_one(config, "writer").and_then(|writer| {
        let readers = match in_memory {
            true => vec![writer.clone()],
            false => (0..read_connections())
                .map(|i| open_one(config, &format!("reader-{i}")))
                .collect::<Result<_, _>>()?,
        };
        Ok((writer, ReadPool::new(readers)))
    });
    opened.map_err(|e| crate::config::ConfigError::Invalid {
        key: match config.store {
            TaskStoreKind::Sqlite => "tasks.sqlite_path",
            TaskStoreKind::Postgres => "tasks.postgres_url",
        }
        .into(),
        message: e.to_string(),
    })
}

/// One connection to the configured store, on a thread named after its `role`.
fn open_one(
    config: &crate::config::TasksConfig,
    role: &str,
) -> Result<StoreThread, store::StoreError> {
    use crate::config::TaskStoreKind;
    match config.store {
        TaskStoreKind::Sqlite => {
            let path = config.sqlite_path.clone();
            StoreThread::spawn(&format!("sqlite-{role}"), move || {
                store::SqliteStore::open(&path)
            })
        }
        TaskStoreKind::Postgres => {
            let url = config.postgres_url.clone();
            StoreThread::spawn(&format!("postgres-{role}"), move || {
                postgres::PostgresStore::open(&url)
            })
        }
    }
}

/// The task service as the broker holds it: the owners (for the join rule of task rooms)
/// and, once started, the manager.
pub(crate) struct TasksState {
    pub owners: manager::TaskOwners,
    pub manager: std::sync::OnceLock<actix::Addr<manager::TaskManager>>,
    /// Once started, the store's read side (`GET /api/agent/{id}`, history).
    pub reader: std::sync::OnceLock<ReadPool>,
    /// `tasks.requests_per_second`, per user.
    pub limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
}

impl TasksState {
    pub fn new(config: &crate::config::TasksConfig) -> TasksState {
        TasksState {
            owners: manager::TaskOwners::new(config.owners_capacity),
            manager: std::sync::OnceLock::new(),
            reader: std::sync::OnceLock::new(),
            limiter: std::num::NonZeroU32::new(config.requests_per_second)
                .map(|n| governor::RateLimiter::keyed(governor::Quota::per_second(n))),
        }
    }
}

/// The message types of the worker protocol.
pub const WORKER_TYPES: [&str; 7] = [
    "task.claim",
    "task.step",
    "task.progress",
    "task.approval_request",
    "task.complete",
    "task.fail",
    "task.undo",
];

/// The namespace of task rooms: `task:{id}`.
pub const NAMESPACE: &str = "task";

/// The room of a task's events.
pub fn room_of(task_id: &str) -> String {
    format!("{NAMESPACE}:{task_id}")
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Queued, waiting for a worker.
    Pending,
    /// A worker holds it.
    Running,
    /// The worker waits for the user to decide on an approval request.
    AwaitingApproval,
    /// Done (terminal).
    Completed,
    /// The worker gave up (terminal).
    Failed,
    /// The user or a system cancelled it (terminal).
    Cancelled,
}

impl TaskStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::AwaitingApproval => "awaiting_approval",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Reads a wire name.
    pub fn parse(name: &str) -> Option<TaskStatus> {
        [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::AwaitingApproval,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Whether nothing more can happen to the task.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// The state machine: `pending → running → (awaiting_approval ↔ running) → completed |
    /// failed | cancelled`; a running task whose worker is lost goes back to `pending`; a
    /// task that has not finished can be cancelled.
    pub fn can_become(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Running, AwaitingApproval)
                | (AwaitingApproval, Running)
                | (Running, Completed)
                | (Running, Failed)
                | (AwaitingApproval, Failed)
                | (Running, Pending)
                | (AwaitingApproval, Pending)
                | (Pending, Cancelled)
                | (Running, Cancelled)
                | (AwaitingApproval, Cancelled)
        )
    }
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// `task_<uuid>`.
    pub id: String,
    /// Who submitted it (the token's `sub`, or the user a system submitted for).
    pub owner: String,
    /// What to do, in the user's words.
    pub task: String,
    /// Higher runs first (`low` 0, `normal` 1, `high` 2, `urgent` 3).
    pub priority: i64,
    /// The conversation it belongs to, if any.
    pub conversation_id: Option<String>,
    /// Anything the submitter attached for the worker.
    #[schema(value_type = Object)]
    pub context: Value,
    /// Where it is.
    #[schema(value_type = String, example = "pending")]
    pub status: TaskStatus,
    /// The worker connection holding it, while running.
    pub worker: Option<String>,
    /// The worker's result, once completed.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Times, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// When a worker first took it.
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// How many times a worker claimed it (a lapsed lease re-queues it).
    pub attempts: i64,
}

/// One step a worker reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// `step_<n>` within the task.
    pub id: String,
    /// What the step does.
    pub name: String,
    /// `running`, `completed`, `failed` or `undone`.
    pub status: String,
    /// 0-100.
    pub progress: i64,
    /// The step's own message or output.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Start time (ms since the epoch).
    pub started_at: i64,
    /// End time.
    pub finished_at: Option<i64>,
}

/// A worker's request for the user's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// `appr_<uuid>`.
    pub id: String,
    /// The step it is about.
    pub step_id: Option<String>,
    /// What the worker wants to do and why.
    pub description: String,
    /// The parameters it would use (the user may change them).
    #[schema(value_type = Object)]
    pub parameters: Value,
    /// Requests made together and decided together share a group.
    pub group: Option<String>,
    /// `pending`, `approved`, `rejected` or `expired`.
    pub status: String,
    /// The user's message with the decision.
    pub message: Option<String>,
    /// Parameters the user changed.
    #[schema(value_type = Option<Object>)]
    pub modified_parameters: Option<Value>,
    /// When it was asked (ms since the epoch).
    pub created_at: i64,
    /// When it is rejected without a decision.
    pub expires_at: i64,
    /// When it was decided.
    pub decided_at: Option<i64>,
}

/// One line of a task's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// When (ms since the epoch).
    pub at: i64,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// What happened.
    pub message: String,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `low`, `normal`, `high`, `urgent`, or a number 0-3.
pub fn parse_priority(value: &Value) -> Option<i64> {
    match value {
        Value::Null => Some(1),
        Value::String(s) => ["low", "normal", "high", "urgent"]
            .iter()
            .position(|p| p == s)
            .map(|p| p as i64),
        Value::Number(n) => n.as_i64().filter(|p| (0..=3).contains(p)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_state_machine_allows_exactly_its_transitions() {
        use TaskStatus::*;
        let all = [
            Pending,
            Running,
            AwaitingApproval,
            Completed,
            Failed,
            Cancelled,
        ];
        let allowed = [
            (Pending, Running),
            (Running, AwaitingApproval),
            (AwaitingApproval, Running),
            (Running, Completed),
            (Running, Failed),
            (AwaitingApproval, Failed),
            (Running, Pending),
            (AwaitingApproval, Pending),
            (Pending, Cancelled),
            (Running, Cancelled),
            (AwaitingApproval, Cancelled),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
            if from.is_terminal() {
                assert!(all.iter().all(|to| !from.can_become(*to)));
            }
            assert_eq!(TaskStatus::parse(from.as_str()), Some(from));
        }
    }

    #[test]
    fn priorities_are_names_or_small_numbers() {
        assert_eq!(parse_priority(&json!(null)), Some(1));
        assert_eq!(parse_priority(&json!("urgent")), Some(3));
        assert_eq!(parse_priority(&json!(0)), Some(0));
        assert_eq!(parse_priority(&json!(9)), None);
        assert_eq!(parse_priority(&json!("asap")), None);
    }
}
