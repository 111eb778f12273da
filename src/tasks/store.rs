//! Where tasks live: the [`TaskStore`] contract and its SQLite implementation.
//!
//! The TaskManager runs the store on a thread of its own
//! ([`super::postgres::StoreThread`]), so an implementation may block: rusqlite, or a
//! synchronous PostgreSQL client.

use rusqlite::{params, Connection};
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

/// One change to a task's stored state. A command's writes go to the store together and are
/// applied as one transaction ([`TaskStore::apply`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new task.
    InsertTask(Task),
    /// A task's new state (the task exists).
    UpdateTask(Task),
    /// A step, new or replaced (keeping its place in the order).
    Step { task_id: String, step: Step },
    /// An approval request, new or replaced.
    Approval { task_id: String, approval: Approval },
    /// A log line, appended.
    Log { task_id: String, entry: LogEntry },
    /// An audit line, appended: who did what to the task, when (ms since the epoch).
    Audit {
        task_id: String,
        at: i64,
        actor: String,
        action: String,
        detail: Value,
    },
}

impl Write {
    /// The task the write changes.
    pub fn task_id(&self) -> &str {
        match self {
            Write::InsertTask(task) | Write::UpdateTask(task) => &task.id,
            Write::Step { task_id, .. }
            | Write::Approval { task_id, .. }
            | Write::Log { task_id, .. }
            | Write::Audit { task_id, .. } => task_id,
        }
    }
}

/// A task as stored, with what `GET /api/agent/{id}` shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The task itself.
    pub task: Task,
    /// In the order they started.
    pub steps: Vec<Step>,
    /// Oldest first.
    pub approvals: Vec<Approval>,
    /// The last lines asked for, oldest first.
    pub logs: Vec<LogEntry>,
}

/// The contract every store keeps:
///
/// - **Atomicity**: [`apply`](TaskStore::apply) applies its writes in order as one
///   transaction: all of them or, when it returns `Err`, none.
/// - **Durability**: once `apply` returns `Ok`, its writes survive the process being killed
///   (and a restart finds them).
/// - **Consistency of reads**: [`snapshot`](TaskStore::snapshot) reads a task and
///   everything under it in one transaction, so it never shows a step without the task
///   state it belongs to. A read sees every write whose `apply` returned before the read
///   began, on any connection to the same store.
/// - **Threads**: calls are made one at a time on one thread (a store may block); a
///   broker opens one store for writes and, where the store allows a second connection,
///   one for reads ([`super::StoreThread`]).
/// - **Failure**: errors are returned, never panicked; the API answers 503 and logs.
pub trait TaskStore: Send {
    /// Applies `writes` in order, as one transaction.
    fn apply(&mut self, writes: &[&Write]) -> Result<(), StoreError>;
    /// One task.
    fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError>;
    /// One task with its steps, approvals and last `logs` log lines, read together.
    fn snapshot(&mut self, id: &str, logs: u32) -> Result<Option<Stored>, StoreError>;
    /// Every task not yet finished (pending, running, awaiting approval): what a restart
    /// puts back in the queue.
    fn unfinished(&mut self) -> Result<Vec<Task>, StoreError>;
    /// A page of tasks, newest first, and how many match in all.
    fn history(&mut self, query: &HistoryQuery) -> Result<(Vec<Task>, u64), StoreError>;
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

/// The migrations a store at schema `version` needs; refused if the store is newer than
/// this broker (an older broker must not write a schema it does not know).
pub(crate) fn migrations_after(
    version: i64,
) -> Result<std::ops::RangeInclusive<usize>, StoreError> {
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > SCHEMA_VERSION {
        return Err(StoreError(format!(
            "the database is at schema version {version}, newer than this broker's \
             {SCHEMA_VERSION}"
        )));
    }
    Ok(version + 1..=SCHEMA_VERSION)
}

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
        if path.is_empty() {
            let mut store = SqliteStore {
                conn: Connection::open_in_memory()?,
            };
            store.migrate()?;
            return Ok(store);
        }
        // SQLite answers SQLITE_BUSY at once, without the busy handler, where waiting could
        // deadlock: two connections switching a new file to WAL together, for one. Such an
        // open is retried a few times (about a second in all) before it counts as an error.
        let mut attempt = 0;
        loop {
            match SqliteStore::open_file(path) {
                Err(OpenError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && attempt < 50 =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Ok(store) => return Ok(store),
                Err(OpenError::Sqlite(e)) => return Err(e.into()),
                Err(OpenError::Store(e)) => return Err(e),
            }
        }
    }

    fn open_file(path: &str) -> Result<SqliteStore, OpenError> {
        let conn = Connection::open(path)?;
        // Set first: switching to WAL takes a lock another opener may hold.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
        // In WAL mode NORMAL loses nothing when the process dies; only a power cut can take
        // the last transactions.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut store = SqliteStore { conn };
        store.migrate_sqlite()?;
        Ok(store)
    }

    /// Migrates under the database's write lock (an immediate transaction), reading the
    /// version inside it: connections opening the same file at once (a writer and its
    /// readers, or brokers starting together) migrate once, and the others wait for it.
    fn migrate(&mut self) -> Result<(), StoreError> {
        self.migrate_sqlite().map_err(|e| match e {
            OpenError::Sqlite(e) => e.into(),
            OpenError::Store(e) => e,
        })
    }

    fn migrate_sqlite(&mut self) -> Result<(), OpenError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for next in migrations_after(version).map_err(OpenError::Store)? {
            let sql = sqlite_migration(next).map_err(OpenError::Store)?;
            tx.execute_batch(&sql)?;
            tx.pragma_update(None, "user_version", next as i64)?;
        }
        Ok(tx.commit()?)
    }
}

/// Why opening a database file failed: SQLite's own error (which may be worth a retry) or
/// the store's.
enum OpenError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for OpenError {
    fn from(err: rusqlite::Error) -> OpenError {
        OpenError::Sqlite(err)
    }
}

fn bodies<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for body in rows {
        out.push(serde_json::from_str(&body?)?);
    }
    Ok(out)
}

fn read_task(conn: &Connection, id: &str) -> Result<Option<Task>, StoreError> {
    Ok(bodies(conn, "SELECT body FROM tasks WHERE id = ?1", &[&id])?.pop())
}

fn read_snapshot(conn: &Connection, id: &str, logs: u32) -> Result<Option<Stored>, StoreError> {
    let Some(task) = read_task(conn, id)? else {
        return Ok(None);
    };
    let steps = bodies(
        conn,
        "SELECT body FROM steps WHERE task_id = ?1 ORDER BY seq",
        &[&id],
    )?;
    let approvals = bodies(
        conn,
        "SELECT body FROM approvals WHERE task_id = ?1 ORDER BY seq",
        &[&id],
    )?;
    let mut stmt = conn.prepare_cached(
        "SELECT at, level, message FROM (SELECT seq, at, level, message FROM logs \
             WHERE task_id = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
    )?;
    let logs = stmt
        .query_map(params![id, logs], |r| {
            Ok(LogEntry {
                at: r.get(0)?,
                level: r.get(1)?,
                message: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(Stored {
        task,
        steps,
        approvals,
        logs,
    }))
}

/// One write, inside the transaction `apply` opened.
fn write_sqlite(conn: &Connection, write: &Write) -> Result<(), StoreError> {
    match write {
        Write::InsertTask(task) | Write::UpdateTask(task) => {
            let sql = if matches!(write, Write::InsertTask(_)) {
                "INSERT INTO tasks (id, owner, status, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5)"
            } else {
                "UPDATE tasks SET owner = ?2, status = ?3, created_at = ?4, body = ?5 WHERE id = ?1"
            };
            let body = serde_json::to_string(task)?;
            let changed = conn.prepare_cached(sql)?.execute(params![
                task.id,
                task.owner,
                task.status.as_str(),
                task.created_at,
                body
            ])?;
            if changed != 1 {
                return Err(StoreError(format!("task {} not stored", task.id)));
            }
        }
        Write::Step { task_id, step } => put_body_sqlite(
            conn,
            "steps",
            task_id,
            &step.id,
            &serde_json::to_string(step)?,
        )?,
        Write::Approval { task_id, approval } => put_body_sqlite(
            conn,
            "approvals",
            task_id,
            &approval.id,
            &serde_json::to_string(approval)?,
        )?,
        Write::Log { task_id, entry } => {
            conn.prepare_cached(
                "INSERT INTO logs (task_id, at, level, message) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![task_id, entry.at, entry.level, entry.message])?;
        }
        Write::Audit {
            task_id,
            at,
            actor,
            action,
            detail,
        } => {
            conn.prepare_cached(
                "INSERT INTO audit (task_id, at, actor, action, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![task_id, at, actor, action, detail.to_string()])?;
        }
    }
    Ok(())
}

/// Stores or replaces a step's or approval's body, keeping its place in the order.
fn put_body_sqlite(
    conn: &Connection,
    table: &str,
    task_id: &str,
    id: &str,
    body: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO {table} (task_id, id, body) VALUES (?1, ?2, ?3) \
         ON CONFLICT (task_id, id) DO UPDATE SET body = excluded.body"
    ))?
    .execute(params![task_id, id, body])?;
    Ok(())
}

impl TaskStore for SqliteStore {
    fn apply(&mut self, writes: &[&Write]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for write in writes {
            write_sqlite(&tx, write)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError> {
        read_task(&self.conn, id)
    }

    fn snapshot(&mut self, id: &str, logs: u32) -> Result<Option<Stored>, StoreError> {
        // A deferred transaction: the reads share one view of the database.
        let tx = self.conn.transaction()?;
        let snapshot = read_snapshot(&tx, id, logs);
        tx.finish()?;
        snapshot
    }

    fn unfinished(&mut self) -> Result<Vec<Task>, StoreError> {
        bodies(
            &self.conn,
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
        let tx = self.conn.transaction()?;
        let total: i64 = tx.query_row(
            &format!("SELECT COUNT(*) FROM tasks WHERE {filter}"),
            &args[..],
            |r| r.get(0),
        )?;
        let (limit, offset) = (i64::from(query.limit), i64::from(query.offset));
        let page = bodies(
            &tx,
            &format!(
                "SELECT body FROM tasks WHERE {filter} ORDER BY created_at DESC, id DESC \
                 LIMIT ?5 OFFSET ?6"
            ),
            &[args[0], args[1], args[2], args[3], &limit, &offset],
        )?;
        tx.finish()?;
        Ok((page, total.max(0) as u64))
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

    fn insert(store: &mut SqliteStore, task: Task) -> Result<(), StoreError> {
        store.apply(&[&Write::InsertTask(task)])
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
                insert(
                    &mut store,
                    task(&format!("t{i}"), owner, 1000 + i, TaskStatus::Pending),
                )
                .unwrap();
            }
            let mut done = task("t0", "alice", 1000, TaskStatus::Completed);
            done.result = Some(json!({"ok": true}));
            store.apply(&[&Write::UpdateTask(done)]).unwrap();
            assert!(insert(&mut store, task("t1", "x", 1, TaskStatus::Pending)).is_err());
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
    fn a_snapshot_holds_a_tasks_steps_approvals_and_last_logs() {
        let mut store = SqliteStore::open("").unwrap();
        insert(&mut store, task("t", "alice", 1, TaskStatus::Running)).unwrap();
        let mut step = Step {
            id: "step_1".into(),
            name: "fetch".into(),
            status: "running".into(),
            progress: 0,
            result: None,
            started_at: 5,
            finished_at: None,
        };
        let first = Write::Step {
            task_id: "t".into(),
            step: step.clone(),
        };
        step.status = "completed".into();
        let second = Write::Step {
            task_id: "t".into(),
            step: step.clone(),
        };
        store.apply(&[&first, &second]).unwrap();
        let logs: Vec<Write> = (0..5)
            .map(|i| Write::Log {
                task_id: "t".into(),
                entry: LogEntry {
                    at: i,
                    level: "info".into(),
                    message: format!("line {i}"),
                },
            })
            .collect();
        store.apply(&logs.iter().collect::<Vec<_>>()).unwrap();
        let snapshot = store.snapshot("t", 2).unwrap().unwrap();
        assert_eq!(snapshot.steps, vec![step]);
        assert_eq!(
            snapshot.logs.iter().map(|l| l.at).collect::<Vec<_>>(),
            [3, 4]
        );
        assert!(store.snapshot("other", 2).unwrap().is_none());
    }

    #[test]
    fn a_failing_write_undoes_the_whole_batch() {
        let mut store = SqliteStore::open("").unwrap();
        insert(&mut store, task("t", "alice", 1, TaskStatus::Pending)).unwrap();
        let running = task("t", "alice", 1, TaskStatus::Running);
        let audit = Write::Audit {
            task_id: "t".into(),
            at: 2,
            actor: "w".into(),
            action: "claim".into(),
            detail: json!({}),
        };
        // The second task does not exist, so its update fails and takes the first with it.
        let missing = Write::UpdateTask(task("nope", "alice", 1, TaskStatus::Running));
        let err = store
            .apply(&[&Write::UpdateTask(running.clone()), &audit, &missing])
            .unwrap_err();
        assert!(err.0.contains("nope"), "{err}");
        assert_eq!(
            store.task("t").unwrap().unwrap().status,
            TaskStatus::Pending
        );
        store.apply(&[&Write::UpdateTask(running), &audit]).unwrap();
        assert_eq!(
            store.task("t").unwrap().unwrap().status,
            TaskStatus::Running
        );
    }

    #[test]
    fn connections_opening_a_new_file_together_migrate_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let path = path.to_str().unwrap().to_owned();
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || SqliteStore::open(&path).map(|_| ()))
            })
            .collect();
        for opener in openers {
            assert_eq!(opener.join().unwrap(), Ok(()));
        }
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
