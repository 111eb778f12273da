//! A store on a thread of its own, with group commit.
//!
//! Stores may block (rusqlite, the synchronous PostgreSQL client), so none runs on an async
//! runtime's thread: [`StoreThread`] owns one on a plain thread and takes jobs in order.
//!
//! Writes come as [`Commit`]s: one command's writes, the effects to run once they are
//! durable (events, messages to workers), and where to say how it went. The thread takes
//! every commit already waiting and applies them in **one** transaction, so a burst of
//! commands costs one disk flush (PostgreSQL: one fsync, ~0.5 ms here) instead of one per
//! command. If that transaction fails, each commit is tried alone, so one bad command fails
//! alone. Effects run in commit order, after the commit, so no event announces a change
//! that a crash could still undo.

use std::sync::mpsc;

use tokio::sync::oneshot;

use super::store::{StoreError, TaskStore, Write};

/// At most this many commits share one transaction (a bound on the transaction's size).
const MAX_GROUP: usize = 256;

/// Something to do once a commit is durable.
pub type Effect = Box<dyn FnOnce() + Send>;

/// One command's writes and what follows from them.
#[derive(Default)]
pub struct Commit {
    /// Applied in order, all or none.
    pub writes: Vec<Write>,
    /// Run in order once the writes are durable; dropped if they fail.
    pub effects: Vec<Effect>,
}

impl Commit {
    /// Nothing to write and nothing to announce.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.effects.is_empty()
    }
}

/// How a commit went.
pub type Committed = oneshot::Receiver<Result<(), StoreError>>;

/// A read (or any job that must run in order with the commits), answering on its own.
type Read = Box<dyn FnOnce(&mut dyn TaskStore) + Send>;

enum Job {
    Read(Read),
    Commit(Commit, oneshot::Sender<Result<(), StoreError>>),
}

/// The handle: cheap to clone; the thread stops when the last handle is dropped.
#[derive(Clone)]
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
                    run(&mut store, &queue);
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

    /// Queues `commit`; the answer says when it is durable (or why not). Never blocks.
    pub fn commit(&self, commit: Commit) -> Committed {
        let (done, committed) = oneshot::channel();
        // If the thread is gone, `done` is dropped with the job and the receiver says so.
        let _ = self.jobs.send(Job::Commit(commit, done));
        committed
    }

    /// Runs `job` on the store after every job queued before it, and waits for it: for a
    /// caller that is not on an async runtime's thread, or must not let anything run in
    /// between (the TaskManager, which owns the order of changes).
    pub fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut dyn TaskStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send_read(move |store| {
            let _ = tx.send(job(store));
        })?;
        rx.recv().map_err(|_| stopped())?
    }

    /// Like [`call`](Self::call), awaited instead of blocking: for HTTP handlers.
    pub async fn read<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut dyn TaskStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send_read(move |store| {
            let _ = tx.send(job(store));
        })?;
        rx.await.map_err(|_| stopped())?
    }

    fn send_read(
        &self,
        job: impl FnOnce(&mut dyn TaskStore) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.jobs
            .send(Job::Read(Box::new(job)))
            .map_err(|_| stopped())
    }
}

/// Several read connections, each on its own thread, taken in turn: a burst of reads is
/// served in parallel instead of queueing on one connection.
pub struct ReadPool {
    readers: Vec<StoreThread>,
    next: std::sync::atomic::AtomicUsize,
}

impl ReadPool {
    /// A pool over `readers` (at least one).
    pub fn new(readers: Vec<StoreThread>) -> ReadPool {
        ReadPool {
            readers,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// [`StoreThread::read`] on the next reader.
    pub async fn read<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut dyn TaskStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.readers.get(turn % self.readers.len().max(1)) {
            Some(reader) => reader.read(job).await,
            None => Err(stopped()),
        }
    }
}

fn stopped() -> StoreError {
    StoreError("the store thread has stopped".into())
}

/// The thread's loop: jobs in order; commits waiting together share a transaction.
fn run(store: &mut dyn TaskStore, queue: &mpsc::Receiver<Job>) {
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        match job {
            Job::Read(read) => read(store),
            Job::Commit(commit, done) => {
                let mut group = vec![(commit, done)];
                while group.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(Job::Commit(commit, done)) => group.push((commit, done)),
                        Ok(read) => {
                            // A read waits for the writes queued before it.
                            next = Some(read);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(store, group);
            }
        }
    }
}

fn commit_group(
    store: &mut dyn TaskStore,
    group: Vec<(Commit, oneshot::Sender<Result<(), StoreError>>)>,
) {
    let outcome = apply(store, group.iter().map(|(c, _)| c));
    if outcome.is_err() && group.len() > 1 {
        for (commit, done) in group {
            let outcome = apply(store, std::iter::once(&commit));
            finish(commit, done, outcome);
        }
        return;
    }
    for (commit, done) in group {
        finish(commit, done, outcome.clone());
    }
}

fn apply<'a>(
    store: &mut dyn TaskStore,
    commits: impl Iterator<Item = &'a Commit>,
) -> Result<(), StoreError> {
    let writes: Vec<&Write> = commits.flat_map(|c| &c.writes).collect();
    match writes.is_empty() {
        true => Ok(()),
        false => store.apply(&writes),
    }
}

fn finish(
    commit: Commit,
    done: oneshot::Sender<Result<(), StoreError>>,
    outcome: Result<(), StoreError>,
) {
    if outcome.is_ok() {
        for effect in commit.effects {
            effect();
        }
    }
    let _ = done.send(outcome);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;
    use crate::tasks::store::SqliteStore;
    use crate::tasks::{Task, TaskStatus};

    fn task(id: &str) -> Task {
        Task {
            id: id.into(),
            owner: "alice".into(),
            task: "t".into(),
            priority: 1,
            conversation_id: None,
            context: json!({}),
            status: TaskStatus::Pending,
            worker: None,
            result: None,
            error: None,
            created_at: 1,
            updated_at: 1,
            started_at: None,
            finished_at: None,
            attempts: 0,
        }
    }

    /// Blocks the thread until released, so commits pile up behind it.
    fn hold(store: &StoreThread) -> mpsc::Sender<()> {
        let (release, held) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel();
        store
            .send_read(move |_| {
                let _ = started.send(());
                let _ = held.recv();
            })
            .unwrap();
        running.recv().unwrap();
        release
    }

    #[actix_rt::test]
    async fn waiting_commits_share_a_transaction_but_fail_alone() {
        let store = StoreThread::spawn("test", || SqliteStore::open("")).unwrap();
        let release = hold(&store);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let commit = |write: Write, label: &'static str| {
            let seen = seen.clone();
            store.commit(Commit {
                writes: vec![write],
                effects: vec![Box::new(move || seen.lock().unwrap().push(label))],
            })
        };
        let first = commit(Write::InsertTask(task("a")), "a");
        // Updating a task that was never stored fails; only this commit may fail.
        let bad = commit(Write::UpdateTask(task("missing")), "bad");
        let third = commit(Write::InsertTask(task("b")), "b");
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(()));
        assert!(bad.await.unwrap().is_err());
        assert_eq!(third.await.unwrap(), Ok(()));
        assert_eq!(
            *seen.lock().unwrap(),
            ["a", "b"],
            "effects of what committed, in order"
        );
        let stored = store
            .read(|s| Ok((s.task("a")?.is_some(), s.task("b")?.is_some())))
            .await
            .unwrap();
        assert_eq!(stored, (true, true));
    }

    #[actix_rt::test]
    async fn a_read_sees_the_commits_queued_before_it() {
        let store = StoreThread::spawn("test", || SqliteStore::open("")).unwrap();
        let committed = store.commit(Commit {
            writes: vec![Write::InsertTask(task("a"))],
            effects: Vec::new(),
        });
        let found = store.read(|s| s.task("a")).await.unwrap();
        assert!(found.is_some());
        assert_eq!(committed.await.unwrap(), Ok(()));
    }
}
