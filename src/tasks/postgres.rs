//! The PostgreSQL task store, and the thread every store runs on.
//!
//! Same schema and contract as the SQLite store ([`super::store::TaskStore`]). The
//! synchronous client must not run inside an async runtime (it drives one of its own), so
//! the TaskManager never calls a store directly: [`StoreThread`] owns the store on a plain
//! thread and the manager's calls go there and wait for the answer.

use std::sync::mpsc;

use postgres::{Client, NoTls};
use serde_json::Value;

use super::store::{schema_v1, HistoryQuery, StoreError, TaskStore, SCHEMA_VERSION};
use super::{Approval, LogEntry, Step, Task};

impl From<postgres::Error> for StoreError {
    fn from(err: postgres::Error) -> StoreError {
        StoreError(format!("postgres: {err}"))
    }
}

/// The SQL that brings a PostgreSQL store from `version - 1` to `version`.
fn postgres_migration(version: usize) -> Result<String, StoreError> {
    match version {
        1 => Ok(schema_v1("BIGINT", "BIGSERIAL PRIMARY KEY")),
        _ => Err(StoreError(format!(
            "no migration to schema version {version}"
        ))),
    }
}

/// The PostgreSQL store. A lost connection is opened again on the next call (the call that
/// found it lost fails, and the API answers 503).
pub struct PostgresStore {
    url: String,
    client: Option<Client>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host/db` or `host=… dbname=…`) and migrates.
    /// Must be called off any async runtime: [`StoreThread`] does.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let mut store = PostgresStore {
            url: url.to_owned(),
            client: None,
        };
        store.migrate()?;
        Ok(store)
    }

    fn conn(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            log::info!("tasks: connecting to PostgreSQL");
            self.client = Some(Client::connect(&self.url, NoTls)?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError("postgres: not connected".into()))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let mut tx = self.conn()?.transaction()?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS switchboard_tasks_schema (version INT NOT NULL);
             LOCK TABLE switchboard_tasks_schema IN EXCLUSIVE MODE;",
        )?;
        let version: i32 = tx
            .query_opt("SELECT version FROM switchboard_tasks_schema", &[])?
            .map_or(0, |row| row.get(0));
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > SCHEMA_VERSION {
            return Err(StoreError(format!(
                "the database is at schema version {version}, newer than this broker's \
                 {SCHEMA_VERSION}"
            )));
        }
        for next in version + 1..=SCHEMA_VERSION {
            tx.batch_execute(&postgres_migration(next)?)?;
        }
        tx.execute("DELETE FROM switchboard_tasks_schema", &[])?;
        tx.execute(
            "INSERT INTO switchboard_tasks_schema (version) VALUES ($1)",
            &[&(SCHEMA_VERSION as i32)],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn put_task(&mut self, task: &Task, insert: bool) -> Result<(), StoreError> {
        let body = serde_json::to_string(task)?;
        let sql = if insert {
            "INSERT INTO tasks (id, owner, status, created_at, body) VALUES ($1, $2, $3, $4, $5)"
        } else {
            "UPDATE tasks SET owner = $2, status = $3, created_at = $4, body = $5 WHERE id = $1"
        };
        let changed = self.conn()?.execute(
            sql,
            &[
                &task.id,
                &task.owner,
                &task.status.as_str(),
                &task.created_at,
                &body,
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
        self.conn()?.execute(
            &format!(
                "INSERT INTO {table} (task_id, id, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (task_id, id) DO UPDATE SET body = EXCLUDED.body"
            ),
            &[&task_id, &id, &body],
        )?;
        Ok(())
    }

    fn bodies<T: serde::de::DeserializeOwned>(
        &mut self,
        sql: &str,
        args: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<T>, StoreError> {
        self.conn()?
            .query(sql, args)?
            .iter()
            .map(|row| Ok(serde_json::from_str(row.get::<_, &str>(0))?))
            .collect()
    }
}

impl TaskStore for PostgresStore {
    fn insert_task(&mut self, task: &Task) -> Result<(), StoreError> {
        self.put_task(task, true)
    }

    fn update_task(&mut self, task: &Task) -> Result<(), StoreError> {
        self.put_task(task, false)
    }

    fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError> {
        Ok(self
            .bodies("SELECT body FROM tasks WHERE id = $1", &[&id])?
            .into_iter()
            .next())
    }

    fn unfinished(&mut self) -> Result<Vec<Task>, StoreError> {
        self.bodies(
            "SELECT body FROM tasks WHERE status IN ('pending', 'running', 'awaiting_approval') \
             ORDER BY created_at",
            &[],
        )
    }

    fn history(&mut self, query: &HistoryQuery) -> Result<(Vec<Task>, u64), StoreError> {
        let status = query.status.map(|s| s.as_str().to_owned());
        let filter = "($1::TEXT IS NULL OR owner = $1) AND ($2::TEXT IS NULL OR status = $2) \
                      AND ($3::BIGINT IS NULL OR created_at >= $3) \
                      AND ($4::BIGINT IS NULL OR created_at <= $4)";
        let total: i64 = self
            .conn()?
            .query_one(
                &format!("SELECT COUNT(*) FROM tasks WHERE {filter}"),
                &[&query.owner, &status, &query.from, &query.to],
            )?
            .get(0);
        let (limit, offset) = (i64::from(query.limit), i64::from(query.offset));
        let page = self.bodies(
            &format!(
                "SELECT body FROM tasks WHERE {filter} ORDER BY created_at DESC, id DESC \
                 LIMIT $5 OFFSET $6"
            ),
            &[
                &query.owner,
                &status,
                &query.from,
                &query.to,
                &limit,
                &offset,
            ],
        )?;
        Ok((page, total.max(0) as u64))
    }

    fn put_step(&mut self, task_id: &str, step: &Step) -> Result<(), StoreError> {
        self.put_body("steps", task_id, &step.id, &serde_json::to_string(step)?)
    }

    fn steps(&mut self, task_id: &str) -> Result<Vec<Step>, StoreError> {
        self.bodies(
            "SELECT body FROM steps WHERE task_id = $1 ORDER BY seq",
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
            "SELECT body FROM approvals WHERE task_id = $1 ORDER BY seq",
            &[&task_id],
        )
    }

    fn log(&mut self, task_id: &str, entry: &LogEntry) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO logs (task_id, at, level, message) VALUES ($1, $2, $3, $4)",
            &[&task_id, &entry.at, &entry.level, &entry.message],
        )?;
        Ok(())
    }

    fn logs(&mut self, task_id: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT at, level, message FROM (SELECT seq, at, level, message FROM logs \
             WHERE task_id = $1 ORDER BY seq DESC LIMIT $2) last ORDER BY seq",
            &[&task_id, &i64::from(limit)],
        )?;
        Ok(rows
            .iter()
            .map(|r| LogEntry {
                at: r.get(0),
                level: r.get(1),
                message: r.get(2),
            })
            .collect())
    }

    fn audit(
        &mut self,
        task_id: &str,
        actor: &str,
        action: &str,
        detail: &Value,
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO audit (task_id, at, actor, action, detail) VALUES ($1, $2, $3, $4, $5)",
            &[
                &task_id,
                &super::now_ms(),
                &actor,
                &action,
                &detail.to_string(),
            ],
        )?;
        Ok(())
    }
}

type Job = Box<dyn FnOnce(&mut dyn TaskStore) + Send>;

/// A store on a thread of its own: each call is sent there and waited for, so calls keep
/// their order and a blocking store never runs on an async runtime's thread.
pub struct StoreThread {
    jobs: mpsc::Sender<Job>,
}

impl StoreThread {
    /// Opens the store with `open` on a new thread; its error when that fails.
    pub fn spawn<S: TaskStore + 'static>(
        name: &str,
        open: impl FnOnce() -> Result<S, StoreError> + Send + 'static,
    ) -> Result<StoreThread, StoreError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (opened, outcome) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("task-store-{name}"))
            .spawn(move || match open() {
                Ok(mut store) => {
                    let _ = opened.send(Ok(()));
                    for job in queue {
                        job(&mut store);
                    }
                }
                Err(err) => {
                    let _ = opened.send(Err(err));
                }
            })
            .map_err(|e| StoreError(format!("cannot start the store thread: {e}")))?;
        outcome
            .recv()
            .map_err(|_| StoreError("the store thread ended while opening".into()))??;
        Ok(StoreThread { jobs })
    }

    fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut dyn TaskStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move |store| {
                let _ = tx.send(job(store));
            }))
            .map_err(|_| StoreError("the store thread has stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError("the store thread has stopped".into()))?
    }
}

impl TaskStore for StoreThread {
    fn insert_task(&mut self, task: &Task) -> Result<(), StoreError> {
        let task = task.clone();
        self.call(move |s| s.insert_task(&task))
    }

    fn update_task(&mut self, task: &Task) -> Result<(), StoreError> {
        let task = task.clone();
        self.call(move |s| s.update_task(&task))
    }

    fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError> {
        let id = id.to_owned();
        self.call(move |s| s.task(&id))
    }

    fn unfinished(&mut self) -> Result<Vec<Task>, StoreError> {
        self.call(|s| s.unfinished())
    }

    fn history(&mut self, query: &HistoryQuery) -> Result<(Vec<Task>, u64), StoreError> {
        let query = query.clone();
        self.call(move |s| s.history(&query))
    }

    fn put_step(&mut self, task_id: &str, step: &Step) -> Result<(), StoreError> {
        let (task_id, step) = (task_id.to_owned(), step.clone());
        self.call(move |s| s.put_step(&task_id, &step))
    }

    fn steps(&mut self, task_id: &str) -> Result<Vec<Step>, StoreError> {
        let task_id = task_id.to_owned();
        self.call(move |s| s.steps(&task_id))
    }

    fn put_approval(&mut self, task_id: &str, approval: &Approval) -> Result<(), StoreError> {
        let (task_id, approval) = (task_id.to_owned(), approval.clone());
        self.call(move |s| s.put_approval(&task_id, &approval))
    }

    fn approvals(&mut self, task_id: &str) -> Result<Vec<Approval>, StoreError> {
        let task_id = task_id.to_owned();
        self.call(move |s| s.approvals(&task_id))
    }

    fn log(&mut self, task_id: &str, entry: &LogEntry) -> Result<(), StoreError> {
        let (task_id, entry) = (task_id.to_owned(), entry.clone());
        self.call(move |s| s.log(&task_id, &entry))
    }

    fn logs(&mut self, task_id: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let task_id = task_id.to_owned();
        self.call(move |s| s.logs(&task_id, limit))
    }

    fn audit(
        &mut self,
        task_id: &str,
        actor: &str,
        action: &str,
        detail: &Value,
    ) -> Result<(), StoreError> {
        let (task_id, actor, action, detail) = (
            task_id.to_owned(),
            actor.to_owned(),
            action.to_owned(),
            detail.clone(),
        );
        self.call(move |s| s.audit(&task_id, &actor, &action, &detail))
    }
}
