//! The PostgreSQL task store.
//!
//! Same schema and contract as the SQLite store ([`super::store::TaskStore`]). The
//! synchronous client must not run inside an async runtime (it drives one of its own), so
//! nothing calls it directly: [`super::StoreThread`] owns it on a plain thread.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel, NoTls, Statement, Transaction};

use super::store::{
    migrations_after, schema_v1, HistoryQuery, StoreError, Stored, TaskStore, Write, SCHEMA_VERSION,
};
use super::Task;

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

/// The statements every call uses, prepared once per connection (a prepared statement costs
/// one round trip per use, an unprepared one two). Writes take arrays (`UNNEST`): a commit
/// of any size is one statement per kind of row, so a group of 200 commands costs a handful
/// of round trips, not a thousand.
struct Statements {
    insert_tasks: Statement,
    update_tasks: Statement,
    put_steps: Statement,
    put_approvals: Statement,
    logs: Statement,
    audit: Statement,
    task: Statement,
    snapshot: Statement,
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Statements, StoreError> {
        // Rows are inserted in the order given (ORDINALITY), so the serial keys that order
        // steps, approvals, logs and audit lines follow the order of the writes.
        let put_bodies = |table: &str| {
            format!(
                "INSERT INTO {table} (task_id, id, body) \
                 SELECT task_id, id, body FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) \
                 WITH ORDINALITY AS u(task_id, id, body, n) ORDER BY n \
                 ON CONFLICT (task_id, id) DO UPDATE SET body = EXCLUDED.body"
            )
        };
        Ok(Statements {
            insert_tasks: client.prepare(
                "INSERT INTO tasks (id, owner, status, created_at, body) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], \
                 $5::TEXT[])",
            )?,
            update_tasks: client.prepare(
                "UPDATE tasks SET owner = u.owner, status = u.status, \
                 created_at = u.created_at, body = u.body \
                 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[]) \
                 AS u(id, owner, status, created_at, body) WHERE tasks.id = u.id",
            )?,
            put_steps: client.prepare(&put_bodies("steps"))?,
            put_approvals: client.prepare(&put_bodies("approvals"))?,
            logs: client.prepare(
                "INSERT INTO logs (task_id, at, level, message) \
                 SELECT task_id, at, level, message \
                 FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[]) \
                 WITH ORDINALITY AS u(task_id, at, level, message, n) ORDER BY n",
            )?,
            audit: client.prepare(
                "INSERT INTO audit (task_id, at, actor, action, detail) \
                 SELECT task_id, at, actor, action, detail \
                 FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[]) \
                 WITH ORDINALITY AS u(task_id, at, actor, action, detail, n) ORDER BY n",
            )?,
            task: client.prepare("SELECT body FROM tasks WHERE id = $1")?,
            // One statement, so one round trip and one view of the database.
            snapshot: client.prepare(
                "SELECT t.body, \
                 (SELECT COALESCE(json_agg(s.body::JSON ORDER BY s.seq), '[]')::TEXT \
                  FROM steps s WHERE s.task_id = t.id), \
                 (SELECT COALESCE(json_agg(a.body::JSON ORDER BY a.seq), '[]')::TEXT \
                  FROM approvals a WHERE a.task_id = t.id), \
                 (SELECT COALESCE(json_agg(json_build_object('at', l.at, 'level', l.level, \
                  'message', l.message) ORDER BY l.seq), '[]')::TEXT \
                  FROM (SELECT seq, at, level, message FROM logs WHERE task_id = t.id \
                  ORDER BY seq DESC LIMIT $2) l) \
                 FROM tasks t WHERE t.id = $1",
            )?,
        })
    }
}

/// Task rows as columns, one entry per task: a later write of the same task replaces an
/// earlier one (its last state is what counts).
#[derive(Default)]
struct TaskColumns {
    at: HashMap<String, usize>,
    id: Vec<String>,
    owner: Vec<String>,
    status: Vec<String>,
    created_at: Vec<i64>,
    body: Vec<String>,
}

impl TaskColumns {
    fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.id,
            &self.owner,
            &self.status,
            &self.created_at,
            &self.body,
        ]
    }

    fn put(&mut self, task: &Task) -> Result<(), StoreError> {
        let body = serde_json::to_string(task)?;
        match self.at.get(&task.id) {
            Some(&i) => {
                self.owner[i] = task.owner.clone();
                self.status[i] = task.status.as_str().into();
                self.created_at[i] = task.created_at;
                self.body[i] = body;
            }
            None => {
                self.at.insert(task.id.clone(), self.id.len());
                self.id.push(task.id.clone());
                self.owner.push(task.owner.clone());
                self.status.push(task.status.as_str().into());
                self.created_at.push(task.created_at);
                self.body.push(body);
            }
        }
        Ok(())
    }
}

/// Step or approval rows as columns: a later write of the same row replaces the body and
/// keeps the place of the first (its place in the task's order).
#[derive(Default)]
struct BodyColumns {
    at: HashMap<(String, String), usize>,
    task_id: Vec<String>,
    id: Vec<String>,
    body: Vec<String>,
}

impl BodyColumns {
    fn put(&mut self, task_id: &str, id: &str, body: String) {
        let key = (task_id.to_owned(), id.to_owned());
        match self.at.get(&key) {
            Some(&i) => self.body[i] = body,
            None => {
                self.at.insert(key, self.id.len());
                self.task_id.push(task_id.to_owned());
                self.id.push(id.to_owned());
                self.body.push(body);
            }
        }
    }
}

/// A commit's writes as columns, one statement per kind.
#[derive(Default)]
struct Columns {
    inserted: TaskColumns,
    updated: TaskColumns,
    steps: BodyColumns,
    approvals: BodyColumns,
    log_task: Vec<String>,
    log_at: Vec<i64>,
    log_level: Vec<String>,
    log_message: Vec<String>,
    audit_task: Vec<String>,
    audit_at: Vec<i64>,
    audit_actor: Vec<String>,
    audit_action: Vec<String>,
    audit_detail: Vec<String>,
}

impl Columns {
    fn of(writes: &[&Write]) -> Result<Columns, StoreError> {
        let mut c = Columns::default();
        for write in writes {
            match write {
                // A task inserted and updated in the same commit is inserted as it ended up.
                Write::InsertTask(task) => c.inserted.put(task)?,
                Write::UpdateTask(task) if c.inserted.at.contains_key(&task.id) => {
                    c.inserted.put(task)?
                }
                Write::UpdateTask(task) => c.updated.put(task)?,
                Write::Step { task_id, step } => {
                    c.steps.put(task_id, &step.id, serde_json::to_string(step)?)
                }
                Write::Approval { task_id, approval } => {
                    c.approvals
                        .put(task_id, &approval.id, serde_json::to_string(approval)?)
                }
                Write::Log { task_id, entry } => {
                    c.log_task.push(task_id.clone());
                    c.log_at.push(entry.at);
                    c.log_level.push(entry.level.clone());
                    c.log_message.push(entry.message.clone());
                }
                Write::Audit {
                    task_id,
                    at,
                    actor,
                    action,
                    detail,
                } => {
                    c.audit_task.push(task_id.clone());
                    c.audit_at.push(*at);
                    c.audit_actor.push(actor.clone());
                    c.audit_action.push(action.clone());
                    c.audit_detail.push(detail.to_string());
                }
            }
        }
        Ok(c)
    }

    fn run(&self, tx: &mut Transaction<'_>, st: &Statements) -> Result<(), StoreError> {
        if !self.inserted.id.is_empty() {
            tx.execute(&st.insert_tasks, &self.inserted.params())?;
        }
        if !self.updated.id.is_empty() {
            let changed = tx.execute(&st.update_tasks, &self.updated.params())?;
            if changed != self.updated.id.len() as u64 {
                return Err(StoreError(format!(
                    "{} of the tasks {:?} not stored",
                    self.updated.id.len() as u64 - changed,
                    self.updated.id
                )));
            }
        }
        for (columns, statement) in [
            (&self.steps, &st.put_steps),
            (&self.approvals, &st.put_approvals),
        ] {
            if !columns.id.is_empty() {
                tx.execute(statement, &[&columns.task_id, &columns.id, &columns.body])?;
            }
        }
        if !self.log_task.is_empty() {
            tx.execute(
                &st.logs,
                &[
                    &self.log_task,
                    &self.log_at,
                    &self.log_level,
                    &self.log_message,
                ],
            )?;
        }
        if !self.audit_task.is_empty() {
            tx.execute(
                &st.audit,
                &[
                    &self.audit_task,
                    &self.audit_at,
                    &self.audit_actor,
                    &self.audit_action,
                    &self.audit_detail,
                ],
            )?;
        }
        Ok(())
    }
}

/// How long a connection attempt may take unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

struct Connected {
    client: Client,
    statements: Statements,
}

impl Connected {
    fn open(url: &str) -> Result<Connected, StoreError> {
        let mut config: postgres::Config = url.parse()?;
        // Without a bound, connecting to an unreachable host waits for the kernel's TCP
        // timeout (minutes), and the manager waits with it when it re-reads tasks after a
        // failed write.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mut client = config.connect(NoTls)?;
        migrate(&mut client)?;
        let statements = Statements::prepare(&mut client)?;
        Ok(Connected { client, statements })
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], under a lock so that brokers starting together
/// migrate once.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS switchboard_tasks_schema (version INT NOT NULL);
         LOCK TABLE switchboard_tasks_schema IN EXCLUSIVE MODE;",
    )?;
    let version: i32 = tx
        .query_opt("SELECT version FROM switchboard_tasks_schema", &[])?
        .map_or(0, |row| row.get(0));
    for next in migrations_after(i64::from(version))? {
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

/// The PostgreSQL store. A lost connection is opened again on the next call (the call that
/// found it lost fails, and the API answers 503).
pub struct PostgresStore {
    url: String,
    connected: Option<Connected>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host/db` or `host=… dbname=…`) and migrates.
    /// Must be called off any async runtime: [`super::StoreThread`] does.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        Ok(PostgresStore {
            url: url.to_owned(),
            connected: Some(Connected::open(url)?),
        })
    }

    fn conn(&mut self) -> Result<&mut Connected, StoreError> {
        if self.connected.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.connected = None;
            log::info!("tasks: connecting to PostgreSQL");
            self.connected = Some(Connected::open(&self.url)?);
        }
        self.connected
            .as_mut()
            .ok_or_else(|| StoreError("postgres: not connected".into()))
    }
}

fn bodies<T: serde::de::DeserializeOwned>(
    client: &mut impl GenericClient,
    statement: &Statement,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<T>, StoreError> {
    client
        .query(statement, args)?
        .iter()
        .map(|row| Ok(serde_json::from_str(row.get::<_, &str>(0))?))
        .collect()
}

impl TaskStore for PostgresStore {
    fn apply(&mut self, writes: &[&Write]) -> Result<(), StoreError> {
        let columns = Columns::of(writes)?;
        let Connected { client, statements } = self.conn()?;
        let mut tx = client.transaction()?;
        columns.run(&mut tx, statements)?;
        tx.commit()?;
        Ok(())
    }

    fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError> {
        let Connected { client, statements } = self.conn()?;
        Ok(bodies(client, &statements.task, &[&id])?.pop())
    }

    fn snapshot(&mut self, id: &str, logs: u32) -> Result<Option<Stored>, StoreError> {
        let Connected { client, statements } = self.conn()?;
        let Some(row) = client.query_opt(&statements.snapshot, &[&id, &i64::from(logs)])? else {
            return Ok(None);
        };
        let json = |i: usize| row.get::<_, &str>(i);
        Ok(Some(Stored {
            task: serde_json::from_str(json(0))?,
            steps: serde_json::from_str(json(1))?,
            approvals: serde_json::from_str(json(2))?,
            logs: serde_json::from_str(json(3))?,
        }))
    }

    fn unfinished(&mut self) -> Result<Vec<Task>, StoreError> {
        let client = &mut self.conn()?.client;
        let statement = client.prepare(
            "SELECT body FROM tasks WHERE status IN ('pending', 'running', 'awaiting_approval') \
             ORDER BY created_at",
        )?;
        bodies(client, &statement, &[])
    }

    fn history(&mut self, query: &HistoryQuery) -> Result<(Vec<Task>, u64), StoreError> {
        let status = query.status.map(|s| s.as_str().to_owned());
        let filter = "($1::TEXT IS NULL OR owner = $1) AND ($2::TEXT IS NULL OR status = $2) \
                      AND ($3::BIGINT IS NULL OR created_at >= $3) \
                      AND ($4::BIGINT IS NULL OR created_at <= $4)";
        let client = &mut self.conn()?.client;
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let total: i64 = tx
            .query_one(
                &format!("SELECT COUNT(*) FROM tasks WHERE {filter}"),
                &[&query.owner, &status, &query.from, &query.to],
            )?
            .get(0);
        let (limit, offset) = (i64::from(query.limit), i64::from(query.offset));
        let page = tx.prepare(&format!(
            "SELECT body FROM tasks WHERE {filter} ORDER BY created_at DESC, id DESC \
             LIMIT $5 OFFSET $6"
        ))?;
        let page = bodies(
            &mut tx,
            &page,
            &[
                &query.owner,
                &status,
                &query.from,
                &query.to,
                &limit,
                &offset,
            ],
        )?;
        tx.commit()?;
        Ok((page, total.max(0) as u64))
    }
}
