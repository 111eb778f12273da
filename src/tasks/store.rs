//! Where tasks live: the [`TaskStore`] contract and its SQLite implementation.
//!
//! The TaskManager runs the store on a thread of its own
//! ([`super::postgres::StoreThread`]), so an implementation may block: rusqlite, or a
//! synchronous PostgreSQL client.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{Approval, LogEntry, Step, Task, TaskStatus};

/// A store failure: the disk, the database server, or a row that no longer parses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("task store: {0}")]
pub struct StoreError(pub String);

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> StoreError {
        StoreError(err.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(err: serde_json::Error) -> StoreError {
        StoreError(format!("a stored row does not parse: {err}"))
    }
}

/// Which tasks `GET /api/agent/history` lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryQuery {
    /// Only this owner's (`None`: everyone's, for system callers).
    pub owner: Option<String>,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Created at or after (ms since the epoch).
    pub from: Option<i64>,
    /// Created at or before.
    pub to: Option<i64>,
    /// At most this many, newest first.
    pub limit: u32,
    /// Skipping this many.
    pub offset: u32,
}

/// The contract every store keeps:
///
/// - **Durability**: when a write returns `Ok`, it survives the process being killed (and a
///   restart finds it); a write that returns `Err` changed nothing.
/// - **Atomicity**: each call is one transaction.
/// - **Ordering**: calls are made one at a time, from one thread; reads see every earlier
///   write.
/// - **Failure**: errors are returned, never panicked; the caller answers 503 and logs.
pub trait TaskStore: Send {
    /// Stores a new task.
    fn insert_task(&mut self, task: &Task) -> Result<(), StoreError>;
    /// Replaces a task's stored state.
    fn update_task(&mut self, task: &Task) -> Result<(), StoreError>;
    /// One task.
    fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError>;
    /// Every task not yet finished (pending, running, awaiting approval): what a restart
    /// puts back in the queue.
    fn unfinished(&mut self) -> Result<Vec<Task>, StoreError>;
    /// A page of tasks, newest first, and how many match in all.
    fn history(&mut self, query: &HistoryQuery) -> Result<(Vec<Task>, u64), StoreError>;
    /// Stores or replaces a step.
    fn put_step(&mut self, task_id: &str, step: &Step) -> Result<(), StoreError>;
    /// A task's steps, in the order they started.
    fn steps(&mut self, task_id: &str) -> Result<Vec<Step>, StoreError>;
    /// Stores or replaces an approval request.
    fn put_approval(&mut self, task_id: &str, approval: &Approval) -> Result<(), StoreError>;
    /// A task's approval requests, oldest first.
    fn approvals(&mut self, task_id: &str) -> Result<Vec<Approval>, StoreError>;
    /// Appends a log line.
    fn log(&mut self, task_id: &str, entry: &LogEntry) -> Result<(), StoreError>;
    /// A task's last `limit` log lines, oldest first.
    fn logs(&mut self, task_id: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError>;
    /// Appends to the audit trail: who did what to the task.
    fn audit(
        &mut self,
        task_id: &str,
        actor: &str,
        action: &str,
        detail: &Value,
    ) -> Result<(), StoreError>;
}

/// Schema version 1, for every store: `{int}` is the 64-bit integer type, `{serial}` an
/// auto-incrementing 64-bit key (which orders steps and approvals as they came).
pub(crate) fn schema_v1(int: &str, serial: &str) -> String {
    "
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at {int} NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX tasks_owner_created ON tasks (owner, created_at DESC);
CREATE INDEX tasks_created ON tasks (created_at DESC);
CREATE INDEX tasks_unfinished ON tasks (status)
    WHERE status IN ('pending', 'running', 'awaiting_approval');
CREATE TABLE steps (
    seq {serial},
    task_id TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (task_id, id)
);
CREATE TABLE approvals (
    seq {serial},
    task_id TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (task_id, id)
);
CREATE TABLE logs (
    seq {serial},
    task_id TEXT NOT NULL,
    at {int} NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_task ON logs (task_id, seq);
CREATE TABLE audit (
    seq {serial},
    task_id TEXT NOT NULL,
    at {int} NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_task ON audit (task_id, seq);
"
    .replace("{int}", int)
    .replace("{serial}", serial)
}

/// How many migrations exist: `PRAGMA user_version` (SQLite) or
/// `switchboard_tasks_schema` (PostgreSQL) holds how many have run.
pub(crate) const SCHEMA_VERSION: usize = 1;

/// The SQL that brings an SQLite store from `version - 1` to `version`.
fn sqlite_migration(version: usize) -> Result<String, StoreError> {
    match version {
        1 => Ok(schema_v1("INTEGER", "INTEGER PRIMARY KEY AUTOINCREMENT")),
        _ => Err(StoreError(format!(
            "no migration to schema version {version}"
        ))),
    }
}

/// The SQLite store: one file in WAL mode (or memory, for tests).
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`; `""` keeps it in memory.
    pub fn open(path: &str) -> Result<SqliteStore, StoreError> {
        let conn = if path.is_empty() {
            Connection::open_in_memory()?
        } else {
            let conn = Connection::open(path)?;
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
            // In WAL mode NORMAL loses nothing when the process dies; only a power cut can
            // take the last transactions.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = SqliteStore { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > SCHEMA_VERSION {
            return Err(StoreError(format!(
                "the database is at schema version {version}, newer than this broker's \
                 {SCHEMA_VERSION}"
            )));
        }
        for next in version + 1..=SCHEMA_VERSION {
            let tx = self.conn.transaction()?;
            tx.execute_batch(&sqlite_migration(next)?)?;
            tx.pragma_update(None, "user_version", next as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    fn put_task(&mut self, task: &Task, insert: bool) -> Result<(), StoreError> {
        let body = serde_json::to_string(task)?;
        let sql = if insert {
            "INSERT INTO tasks (id, owner, status, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5)"
        } else {
            "UPDATE tasks SET owner = ?2, status = ?3, created_at = ?4, body = ?5 WHERE id = ?1"
        };
        let changed = self.conn.execute(
            sql,
            params![
                task.id,
                task.owner,
                task.status.as_str(),
                task.created_at,
                body
            ],
        )?;
        if changed != 1 {
            return Err(StoreError(format!("task {} not stored", task.id)));
        }
        Ok(())
    }

    /// Stores or replaces a step's or approval's body, keeping its place in the order.
    fn put_body(
        &mut self,
        table: &str,
        task_id: &str,
        id: &str,
        body: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            &format!(
                "INSERT INTO {table} (task_id, id, body) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (task_id, id) DO UPDATE SET body = excluded.body"
            ),
            params![task_id, id, body],
        )?;
        Ok(())
    }

    fn bodies<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for body in rows {
            out.push(serde_json::from_str(&body?)?);
        }
        Ok(out)
    }
}

impl TaskStore for SqliteStore {
    fn insert_task(&mut self, task: &Task) -> Result<(), StoreError> {
        self.put_task(task, true)
    }

    fn update_task(&mut self, task: &Task) -> Result<(), StoreError> {
        self.put_task(task, false)
    }

    fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM tasks WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    fn unfinished(&mut self) -> Result<Vec<Task>, StoreError> {
        self.bodies(
            "SELECT body FROM tasks WHERE status IN ('pending', 'running', 'awaiting_approval') \
             ORDER BY created_at",
            &[],
        )
    }

    fn history(&mut self, query: &HistoryQuery) -> Result<(Vec<Task>, u64), StoreError> {
        let status = query.status.map(|s| s.as_str());
        let filter = "(?1 IS NULL OR owner = ?1) AND (?2 IS NULL OR status = ?2) \
                      AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at <= ?4)";
        let args: [&dyn rusqlite::ToSql; 4] = [&query.owner, &status, &query.from, &query.to];
        let total: i64 = self.conn.query_row(
            &format!("SELECT COUNT(*) FROM tasks WHERE {filter}"),
            &args[..],
            |r| r.get(0),
        )?;
        let (limit, offset) = (i64::from(query.limit), i64::from(query.offset));
        let page = self.bodies(
            &format!(
                "SELECT body FROM tasks WHERE {filter} ORDER BY created_at DESC, id DESC \
                 LIMIT ?5 OFFSET ?6"
            ),
            &[args[0], args[1], args[2], args[3], &limit, &offset],
        )?;
        Ok((page, total.max(0) as u64))
    }

    fn put_step(&mut self, task_id: &str, step: &Step) -> Result<(), StoreError> {
        self.put_body("steps", task_id, &step.id, &serde_json::to_string(step)?)
    }

    fn steps(&mut self, task_id: &str) -> Result<Vec<Step>, StoreError> {
        self.bodies(
            "SELECT body FROM steps WHERE task_id = ?1 ORDER BY seq",
            &[&task_id],
        )
    }

    fn put_approval(&mut self, task_id: &str, approval: &Approval) -> Result<(), StoreError> {
        self.put_body(
            "approvals",
            task_id,
            &approval.id,
            &serde_json::to_string(approval)?,
        )
    }

    fn approvals(&mut self, task_id: &str) -> Result<Vec<Approval>, StoreError> {
        self.bodies(
            "SELECT body FROM approvals WHERE task_id = ?1 ORDER BY seq",
            &[&task_id],
        )
    }

    fn log(&mut self, task_id: &str, entry: &LogEntry) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO logs (task_id, at, level, message) VALUES (?1, ?2, ?3, ?4)",
            params![task_id, entry.at, entry.level, entry.message],
        )?;
        Ok(())
    }

    fn logs(&mut self, task_id: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, level, message FROM (SELECT seq, at, level, message FROM logs \
             WHERE task_id = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![task_id, limit], |r| {
            Ok(LogEntry {
                at: r.get(0)?,
                level: r.get(1)?,
                message: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn audit(
        &mut self,
        task_id: &str,
        actor: &str,
        action: &str,
        detail: &Value,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO audit (task_id, at, actor, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![task_id, super::now_ms(), actor, action, detail.to_string()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(id: &str, owner: &str, created_at: i64, status: TaskStatus) -> Task {
        Task {
            id: id.into(),
            owner: owner.into(),
            task: "do it".into(),
            priority: 1,
            conversation_id: None,
            context: json!({}),
            status,
            worker: None,
            result: None,
            error: None,
            created_at,
            updated_at: created_at,
            started_at: None,
            finished_at: None,
            attempts: 0,
        }
    }

    #[test]
    fn tasks_survive_reopening_and_history_filters_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let path = path.to_str().unwrap();
        {
            let mut store = SqliteStore::open(path).unwrap();
            for i in 0..5 {
                let owner = if i % 2 == 0 { "alice" } else { "bob" };
                store
                    .insert_task(&task(
                        &format!("t{i}"),
                        owner,
                        1000 + i,
                        TaskStatus::Pending,
                    ))
                    .unwrap();
            }
            let mut done = task("t0", "alice", 1000, TaskStatus::Completed);
            done.result = Some(json!({"ok": true}));
            store.update_task(&done).unwrap();
            assert!(store
                .insert_task(&task("t1", "x", 1, TaskStatus::Pending))
                .is_err());
        }
        let mut store = SqliteStore::open(path).unwrap();
        assert_eq!(
            store.task("t0").unwrap().unwrap().result,
            Some(json!({"ok": true}))
        );
        assert_eq!(store.unfinished().unwrap().len(), 4);
        let alice = HistoryQuery {
            owner: Some("alice".into()),
            limit: 2,
            ..HistoryQuery::default()
        };
        let (page, total) = store.history(&alice).unwrap();
        assert_eq!(total, 3);
        assert_eq!(
            page.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["t4", "t2"]
        );
        let (page, _) = store
            .history(&HistoryQuery {
                offset: 2,
                ..alice.clone()
            })
            .unwrap();
        assert_eq!(page[0].id, "t0");
        let completed = HistoryQuery {
            status: Some(TaskStatus::Completed),
            limit: 10,
            ..HistoryQuery::default()
        };
        assert_eq!(store.history(&completed).unwrap().1, 1);
        let window = HistoryQuery {
            from: Some(1001),
            to: Some(1003),
            limit: 10,
            ..HistoryQuery::default()
        };
        assert_eq!(store.history(&window).unwrap().1, 3);
    }

    #[test]
    fn steps_approvals_logs_and_audit_are_kept_per_task() {
        let mut store = SqliteStore::open("").unwrap();
        store
            .insert_task(&task("t", "alice", 1, TaskStatus::Running))
            .unwrap();
        let mut step = Step {
            id: "step_1".into(),
            name: "fetch".into(),
            status: "running".into(),
            progress: 0,
            result: None,
            started_at: 5,
            finished_at: None,
        };
        store.put_step("t", &step).unwrap();
        step.status = "completed".into();
        store.put_step("t", &step).unwrap();
        assert_eq!(store.steps("t").unwrap(), vec![step]);
        for i in 0..5 {
            store
                .log(
                    "t",
                    &LogEntry {
                        at: i,
                        level: "info".into(),
                        message: format!("line {i}"),
                    },
                )
                .unwrap();
        }
        let last = store.logs("t", 2).unwrap();
        assert_eq!(last.iter().map(|l| l.at).collect::<Vec<_>>(), [3, 4]);
        store.audit("t", "alice", "submit", &json!({})).unwrap();
        assert!(store.steps("other").unwrap().is_empty());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = SqliteStore::open(path.to_str().unwrap()).err().unwrap();
        assert!(err.0.contains("newer"), "{err}");
    }
}
