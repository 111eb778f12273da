//! The agent task API against real brokers: `/api/agent` over HTTP, a worker speaking the
//! `task.*` protocol over WebSocket, the owner's tabs on `/api/agent/{id}/updates`, and the
//! SQLite store across a restart.

use crate::support::{self, receiver};

use std::time::Duration;

use receiver::Api;
use serde_json::{json, Value};
use support::{test_config, token, Client, TestBroker};
use switchboard::Config;

const KEY: &str = "tasks-test-api-key-0123456789";

fn config() -> Config {
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    config.tasks.sqlite_path = String::new();
    config.tasks.worker_subjects = vec!["worker-*".into()];
    config
}

async fn worker(broker: &TestBroker, name: &str) -> Client {
    let mut ws = Client::connect(&broker.ws_url(Some(&token(name, &[])))).await;
    ws.recv_type("system.connection.established").await;
    ws
}

/// Sends a worker request and returns its reply's payload.
async fn ask(ws: &mut Client, msg_type: &str, payload: Value) -> Value {
    let id = format!("{msg_type}-{}", rand_id());
    ws.send_json(json!({"type": msg_type, "id": id, "payload": payload}))
        .await;
    loop {
        let frame = ws.recv().await;
        if frame["correlation_id"] == id {
            assert_ne!(frame["type"], "system.error", "{msg_type}: {frame}");
            return frame["payload"].clone();
        }
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The next push of `msg_type` to a worker.
async fn push(ws: &mut Client, msg_type: &str) -> Value {
    ws.skip_until(msg_type).await["payload"].clone()
}

/// The event types a tab receives until (and including) `last`.
async fn event_types_until(tab: &mut Client, last: &str) -> Vec<String> {
    let mut types = Vec::new();
    loop {
        let frame = tab.skip_until("task.event").await;
        let kind = frame["payload"]["type"].as_str().unwrap().to_owned();
        assert_eq!(frame["payload"]["version"], 1);
        assert!(frame["seq"].is_u64());
        types.push(kind.clone());
        if kind == last {
            return types;
        }
    }
}

/// The next event that says the task is now `status`.
async fn status_change_to(tab: &mut Client, status: &str) -> Value {
    loop {
        let event = tab.skip_until("task.event").await["payload"].clone();
        if event["type"] == "status_change" && event["data"]["status"] == status {
            return event;
        }
    }
}

async fn submit(http: &Api, user: &str, body: Value) -> Value {
    let (status, answer) = http
        .call_as("POST", "/api/agent", Some(user), Some(body))
        .await;
    assert_eq!(status, 201, "{answer}");
    answer["data"]["task"].clone()
}

#[actix_rt::test]
async fn a_task_runs_through_steps_and_an_approval_and_every_tab_sees_the_same_events() {
    let broker = TestBroker::start(config());
    let http = Api::new(broker.http_url(""), KEY);
    let alice = token("alice", &[]);
    let task = submit(
        &http,
        &alice,
        json!({"task": "tidy the reports", "priority": "high"}),
    )
    .await;
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["status"], "pending");
    assert_eq!(task["priority"], 2);
    let updates = format!("ws://{}/api/agent/{id}/updates?token={alice}", broker.addr);
    let mut tab = Client::connect(&updates).await;

    let mut w = worker(&broker, "worker-1").await;
    let claimed = ask(&mut w, "task.claim", json!({})).await;
    assert_eq!(claimed["task"]["id"], id.as_str());
    let step = ask(
        &mut w,
        "task.step",
        json!({"taskId": id, "action": "start", "name": "scan"}),
    )
    .await;
    let step_id = step["stepId"].as_str().unwrap().to_owned();
    ask(
        &mut w,
        "task.progress",
        json!({"taskId": id, "progress": 50, "message": "half"}),
    )
    .await;
    ask(
        &mut w,
        "task.step",
        json!({"taskId": id, "action": "complete", "result": {"files": 3}}),
    )
    .await;
    let asked = ask(
        &mut w,
        "task.approval_request",
        json!({"taskId": id, "description": "delete 3 files", "parameters": {"n": 3}}),
    )
    .await;
    let approval_id = asked["approvalId"].as_str().unwrap().to_owned();

    let (status, detail) = http
        .call_as("GET", &format!("/api/agent/{id}"), Some(&alice), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(detail["success"], true);
    assert_eq!(detail["data"]["task"]["status"], "awaiting_approval");
    assert_eq!(detail["data"]["steps"][0]["status"], "completed");
    assert_eq!(detail["data"]["approvals"][0]["status"], "pending");

    let bob = token("bob", &[]);
    let path = format!("/api/agent/{id}/approve");
    let decision = json!({"approvalId": approval_id, "approved": true, "message": "ok"});
    assert_eq!(
        http.call_as("POST", &path, Some(&bob), Some(decision.clone()))
            .await
            .0,
        403
    );
    let (status, answer) = http
        .call_as("POST", &path, Some(&alice), Some(decision.clone()))
        .await;
    assert_eq!(status, 200, "{answer}");
    let told = push(&mut w, "task.approval_decision").await;
    assert_eq!(told["approved"], true);
    assert_eq!(told["approvalId"], approval_id.as_str());
    assert_eq!(
        http.call_as("POST", &path, Some(&alice), Some(decision))
            .await
            .0,
        409
    );

    // Undo reaches the worker, which reports the step rolled back.
    let (status, undo) = http
        .call_as(
            "POST",
            &format!("/api/agent/{id}/undo"),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 202, "{undo}");
    assert_eq!(
        push(&mut w, "task.undo_request").await["stepId"],
        step_id.as_str()
    );
    ask(
        &mut w,
        "task.undo",
        json!({"taskId": id, "stepId": step_id, "ok": true}),
    )
    .await;
    ask(
        &mut w,
        "task.complete",
        json!({"taskId": id, "result": {"deleted": 3}}),
    )
    .await;

    let expected = [
        "status_change",
        "queue_update",
        "status_change",
        "step_start",
        "step_progress",
        "step_complete",
        "status_change",
        "approval_request",
        "status_change",
        "status_change",
        "step_complete",
        "status_change",
        "completed",
    ];
    assert_eq!(event_types_until(&mut tab, "completed").await, expected);
    // A second tab, opened after the end, gets every event from the task's history.
    let mut late = Client::connect(&updates).await;
    assert_eq!(event_types_until(&mut late, "completed").await, expected);
    let (_, polled) = http
        .call_as(
            "GET",
            &format!("/api/agent/{id}/events?since=0"),
            Some(&alice),
            None,
        )
        .await;
    let polled: Vec<&str> = polled["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(polled, expected, "the polling fallback has the same events");

    let (_, detail) = http
        .call_as("GET", &format!("/api/agent/{id}"), Some(&alice), None)
        .await;
    assert_eq!(detail["data"]["task"]["status"], "completed");
    assert_eq!(detail["data"]["task"]["result"], json!({"deleted": 3}));
    assert_eq!(detail["data"]["steps"][0]["status"], "undone");
    assert_eq!(
        http.call_as("DELETE", &format!("/api/agent/{id}"), Some(&alice), None)
            .await
            .0,
        409
    );
    let (_, mine) = http
        .call_as(
            "GET",
            "/api/agent/history?status=completed",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(mine["data"]["total"], 1);
    let (_, theirs) = http
        .call_as("GET", "/api/agent/history", Some(&bob), None)
        .await;
    assert_eq!(theirs["data"]["total"], 0);
    let (_, all) = http
        .call_as("GET", "/api/agent/history", Some(KEY), None)
        .await;
    assert_eq!(all["data"]["total"], 1, "a system sees every task");
}

#[actix_rt::test]
async fn errors_are_401_403_404_409_422_and_429() {
    let mut config = config();
    config.tasks.max_active_per_user = 1;
    config.tasks.requests_per_second = 20;
    let broker = TestBroker::start(config);
    let http = Api::new(broker.http_url(""), KEY);
    let alice = token("alice", &[]);
    assert_eq!(
        http.call_as("POST", "/api/agent", None, Some(json!({"task": "x"})))
            .await
            .0,
        401
    );
    assert_eq!(
        http.call_as(
            "POST",
            "/api/agent",
            Some("forged"),
            Some(json!({"task": "x"}))
        )
        .await
        .0,
        401
    );
    let (status, body) = http
        .call_as(
            "POST",
            "/api/agent",
            Some(&alice),
            Some(json!({"task": " "})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unprocessable"))
    );
    assert_eq!(
        http.call_as(
            "POST",
            "/api/agent",
            Some(&alice),
            Some(json!({"task": "x", "priority": "asap"}))
        )
        .await
        .0,
        422
    );
    assert_eq!(
        http.call_as(
            "POST",
            "/api/agent",
            Some(&alice),
            Some(json!({"task": "x", "userId": "bob"}))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        http.call_as(
            "POST",
            "/api/agent",
            Some(&alice),
            Some(json!({"tsak": "x"}))
        )
        .await
        .0,
        400
    );
    let task = submit(&http, &alice, json!({"task": "one"})).await;
    let (status, body) = http
        .call_as(
            "POST",
            "/api/agent",
            Some(&alice),
            Some(json!({"task": "two"})),
        )
        .await;
    assert_eq!(status, 429, "max_active_per_user: {body}");
    let id = task["id"].as_str().unwrap();
    assert_eq!(
        http.call_as(
            "GET",
            &format!("/api/agent/{id}"),
            Some(&token("bob", &[])),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        http.call_as("GET", "/api/agent/task_nope", Some(&alice), None)
            .await
            .0,
        404
    );
    assert_eq!(
        http.call_as("GET", "/api/agent/history?limit=500", Some(&alice), None)
            .await
            .0,
        422
    );
    let dave = token("dave", &[]);
    let mut refused = 0;
    for _ in 0..30 {
        if http
            .call_as("GET", "/api/agent/history", Some(&dave), None)
            .await
            .0
            == 429
        {
            refused += 1;
        }
    }
    assert!(refused > 0, "tasks.requests_per_second per user");
    // A user's token cannot work on tasks: a worker sees every user's.
    let mut not_a_worker = worker(&broker, "alice").await;
    not_a_worker
        .send_json(json!({"type": "task.claim", "id": "c", "payload": {}}))
        .await;
    let refused = not_a_worker.skip_until("system.error").await;
    assert_eq!(refused["payload"]["code"], "forbidden", "{refused}");
    // A system may submit for a user.
    let (status, body) = http
        .call_as(
            "POST",
            "/api/agent",
            Some(KEY),
            Some(json!({"task": "for carol", "userId": "carol"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["task"]["owner"], "carol");
}

#[actix_rt::test]
async fn a_worker_that_goes_silent_loses_the_task_and_cancel_tells_the_next_one() {
    let mut config = config();
    config.tasks.lease = Duration::from_millis(300);
    let broker = TestBroker::start(config);
    let http = Api::new(broker.http_url(""), KEY);
    let alice = token("alice", &[]);
    let task = submit(&http, &alice, json!({"task": "long"})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let mut first = worker(&broker, "worker-1").await;
    assert_eq!(
        ask(&mut first, "task.claim", json!({})).await["task"]["attempts"],
        1
    );
    // A second worker waits for work: the task comes back to it when the lease lapses.
    let mut second = worker(&broker, "worker-2").await;
    let waiting = ask(&mut second, "task.claim", json!({"wait": true})).await;
    assert_eq!(waiting["waiting"], true);
    let assigned = push(&mut second, "task.assigned").await;
    assert_eq!(assigned["task"]["id"], id.as_str());
    assert_eq!(assigned["task"]["attempts"], 2);
    // The first worker no longer holds it.
    first
        .send_json(json!({"type": "task.complete", "id": "late", "payload": {"taskId": id}}))
        .await;
    assert_eq!(
        first.skip_until("system.error").await["payload"]["code"],
        "forbidden"
    );
    let (status, _) = http
        .call_as("DELETE", &format!("/api/agent/{id}"), Some(&alice), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        push(&mut second, "task.cancel").await["taskId"],
        id.as_str()
    );
    let (_, detail) = http
        .call_as("GET", &format!("/api/agent/{id}"), Some(&alice), None)
        .await;
    assert_eq!(detail["data"]["task"]["status"], "cancelled");
}

#[actix_rt::test]
async fn an_unanswered_approval_is_rejected_at_its_deadline_and_the_long_poll_wakes() {
    let mut config = config();
    config.tasks.approval_timeout = Duration::from_millis(300);
    let broker = TestBroker::start(config);
    let http = Api::new(broker.http_url(""), KEY);
    let alice = token("alice", &[]);
    let task = submit(&http, &alice, json!({"task": "risky"})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let (_, first) = http
        .call_as(
            "GET",
            &format!("/api/agent/{id}/events?since=0"),
            Some(&alice),
            None,
        )
        .await;
    let last = first["data"]["lastSeq"].as_u64().unwrap();
    let poll = {
        let (base, id, alice) = (broker.http_url(""), id.clone(), alice.clone());
        actix_rt::spawn(async move {
            let http = Api::new(base, KEY);
            http.call_as(
                "GET",
                &format!("/api/agent/{id}/events?since={last}&wait=10000"),
                Some(&alice),
                None,
            )
            .await
        })
    };
    let mut w = worker(&broker, "worker-1").await;
    ask(&mut w, "task.claim", json!({})).await;
    let (status, woke) = poll.await.unwrap();
    assert_eq!(status, 200);
    let events = woke["data"]["events"].as_array().unwrap();
    assert!(
        !events.is_empty(),
        "the long poll answered with the claim's events"
    );
    assert!(events[0]["seq"].as_u64().unwrap() > last);
    ask(
        &mut w,
        "task.approval_request",
        json!({"taskId": id, "description": "wipe"}),
    )
    .await;
    let told = push(&mut w, "task.approval_decision").await;
    assert_eq!(told["approved"], false);
    assert_eq!(told["status"], "expired");
    let (_, detail) = http
        .call_as("GET", &format!("/api/agent/{id}"), Some(&alice), None)
        .await;
    assert_eq!(detail["data"]["task"]["status"], "running");
}

#[actix_rt::test]
async fn only_the_owner_watches_a_task_room() {
    let broker = TestBroker::start(config());
    let http = Api::new(broker.http_url(""), KEY);
    let alice = token("alice", &[]);
    let task = submit(&http, &alice, json!({"task": "private"})).await;
    let id = task["id"].as_str().unwrap();
    let bob = token("bob", &["*"]);
    let refused = Client::try_connect(awc::Client::new().ws(format!(
        "ws://{}/api/agent/{id}/updates?token={bob}",
        broker.addr
    )))
    .await;
    if let Ok(mut ws) = refused {
        assert!(ws.expect_close().await.code.is_some());
    }
    // Over protocol v1 too, whatever the token's room patterns say.
    let mut v1 = broker.client("bob", &["*"]).await;
    v1.send_json(json!({"type": "room.join", "room": format!("task:{id}")}))
        .await;
    assert_eq!(
        v1.skip_until("system.error").await["payload"]["code"],
        "forbidden"
    );
    let mut owner = broker.client("alice", &[]).await;
    owner
        .send_json(
            json!({"type": "room.join", "room": format!("task:{id}"), "payload": {"since_seq": 0}}),
        )
        .await;
    owner.recv_type("room.joined").await;
    assert_eq!(
        owner.skip_until("task.event").await["payload"]["type"],
        "status_change"
    );
}

#[actix_rt::test]
async fn tasks_survive_a_restart_and_a_running_one_goes_back_to_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config();
    config.tasks.sqlite_path = dir.path().join("tasks.db").to_str().unwrap().into();
    restart_keeps_tasks(config).await;
}

/// A store that refuses a write (here a trigger; in production a full disk or a lost
/// database) fails that command alone with 503: nothing half-done is kept in memory, the
/// task is read back from the store and carries on from what was stored.
#[actix_rt::test]
async fn a_refused_write_answers_503_and_the_task_carries_on_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let mut config = config();
    config.tasks.sqlite_path = path.to_str().unwrap().into();
    let db = || rusqlite::Connection::open(&path).unwrap();
    refused_writes(
        config,
        || {
            db().execute_batch(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON tasks \
                 WHEN NEW.body LIKE '%poison%' \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;
                 CREATE TRIGGER refuse_completion BEFORE UPDATE OF status ON tasks \
                 WHEN NEW.status = 'completed' \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
            )
            .unwrap()
        },
        || {
            db().execute_batch("DROP TRIGGER refuse_completion;")
                .unwrap()
        },
    )
    .await;
}

#[actix_rt::test]
async fn a_refused_write_on_postgres_too() {
    let Some(db) = ScratchDb::create() else {
        return;
    };
    let mut config = config();
    config.tasks.store = switchboard::config::TaskStoreKind::Postgres;
    config.tasks.postgres_url = db.url();
    refused_writes(
        config,
        || {
            db.run(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
                 CREATE TRIGGER refuse_poison BEFORE INSERT ON tasks FOR EACH ROW \
                 WHEN (NEW.body LIKE '%poison%') EXECUTE FUNCTION refuse();
                 CREATE TRIGGER refuse_completion BEFORE UPDATE ON tasks FOR EACH ROW \
                 WHEN (NEW.status = 'completed') EXECUTE FUNCTION refuse();",
            )
            .unwrap()
        },
        || db.run("DROP TRIGGER refuse_completion ON tasks;").unwrap(),
    )
    .await;
}

/// The flow of the refused-write tests: `refuse` makes the store refuse to insert a task
/// whose text is "poison" and to mark any task completed; `allow` lifts the second.
async fn refused_writes(config: Config, refuse: impl FnOnce(), allow: impl FnOnce()) {
    let broker = TestBroker::start(config);
    let http = Api::new(broker.http_url(""), KEY);
    let alice = token("alice", &[]);
    refuse();

    let (status, answer) = http
        .call_as(
            "POST",
            "/api/agent",
            Some(&alice),
            Some(json!({"task": "poison"})),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    let (_, page) = http
        .call_as("GET", "/api/agent/history", Some(&alice), None)
        .await;
    assert_eq!(
        page["data"]["total"], 0,
        "a refused submit leaves nothing: {page}"
    );

    let task = submit(&http, &alice, json!({"task": "fine"})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let updates = format!("ws://{}/api/agent/{id}/updates?token={alice}", broker.addr);
    let mut tab = Client::connect(&updates).await;
    let mut w = worker(&broker, "worker-1").await;
    assert_eq!(
        ask(&mut w, "task.claim", json!({})).await["task"]["id"],
        id.as_str()
    );
    status_change_to(&mut tab, "running").await;
    w.send_json(json!({"type": "task.complete", "id": "done", "payload": {"taskId": id}}))
        .await;
    let refused = w.skip_until("system.error").await;
    assert_eq!(refused["correlation_id"], "done");
    assert_eq!(refused["payload"]["code"], "unavailable", "{refused}");
    // Read back from the store: running, with its worker gone from memory, so it is
    // queued again, and every tab is told.
    let requeued = tab.skip_until("task.event").await;
    assert_eq!(
        requeued["payload"]["data"]["status"], "pending",
        "{requeued}"
    );
    let (_, detail) = http
        .call_as("GET", &format!("/api/agent/{id}"), Some(&alice), None)
        .await;
    assert_eq!(detail["data"]["task"]["status"], "pending", "{detail}");

    allow();
    let claimed = ask(&mut w, "task.claim", json!({})).await;
    assert_eq!(claimed["task"]["id"], id.as_str());
    assert_eq!(claimed["task"]["attempts"], 2);
    ask(&mut w, "task.complete", json!({"taskId": id})).await;
    let (_, detail) = http
        .call_as("GET", &format!("/api/agent/{id}"), Some(&alice), None)
        .await;
    assert_eq!(detail["data"]["task"]["status"], "completed", "{detail}");
    broker.shutdown().await;
}

#[actix_rt::test]
async fn on_postgres_too() {
    let Some(db) = ScratchDb::create() else {
        return;
    };
    let mut config = config();
    config.tasks.store = switchboard::config::TaskStoreKind::Postgres;
    config.tasks.postgres_url = db.url();
    restart_keeps_tasks(config.clone()).await;
    // The rest of the flow on the same database.
    let broker = TestBroker::start(config);
    let http = Api::new(broker.http_url(""), KEY);
    let alice = token("alice", &[]);
    let (_, page) = http
        .call_as(
            "GET",
            "/api/agent/history?limit=1&offset=1",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(page["data"]["total"], 2);
    assert_eq!(page["data"]["tasks"].as_array().unwrap().len(), 1);
    let task = submit(&http, &alice, json!({"task": "on postgres"})).await;
    let id = task["id"].as_str().unwrap();
    let mut w = worker(&broker, "worker-3").await;
    // Two tasks are queued from before; the urgent one comes first.
    for _ in 0..3 {
        let claimed = ask(&mut w, "task.claim", json!({})).await;
        let claimed_id = claimed["task"]["id"].as_str().unwrap().to_owned();
        ask(
            &mut w,
            "task.step",
            json!({"taskId": claimed_id, "action": "start", "name": "s"}),
        )
        .await;
        ask(
            &mut w,
            "task.complete",
            json!({"taskId": claimed_id, "result": {"ok": true}}),
        )
        .await;
    }
    let (_, detail) = http
        .call_as("GET", &format!("/api/agent/{id}"), Some(&alice), None)
        .await;
    assert_eq!(detail["data"]["task"]["status"], "completed");
    assert_eq!(detail["data"]["steps"].as_array().unwrap().len(), 1);
    broker.shutdown().await;
}

/// A PostgreSQL database of its own for one test, dropped at the end. The server is
/// `SWITCHBOARD_POSTGRES` (libpq key/values without `dbname`; default `host=127.0.0.1
/// user=postgres`). Without one the test prints SKIP and passes, unless
/// `SWITCHBOARD_REQUIRE_POSTGRES=1` (CI).
struct ScratchDb {
    server: String,
    name: String,
}

impl ScratchDb {
    fn create() -> Option<ScratchDb> {
        let server = std::env::var("SWITCHBOARD_POSTGRES")
            .unwrap_or_else(|_| "host=127.0.0.1 user=postgres".into());
        let name = format!(
            "switchboard_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let db = ScratchDb { server, name };
        match db.admin(&format!("CREATE DATABASE {}", db.name)) {
            Ok(()) => Some(db),
            Err(err) if std::env::var("SWITCHBOARD_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("SWITCHBOARD_REQUIRE_POSTGRES=1 but PostgreSQL is not usable: {err}")
            }
            Err(err) => {
                eprintln!("SKIP: no PostgreSQL at `{}`: {err}", db.server);
                std::mem::forget(db);
                None
            }
        }
    }

    fn url(&self) -> String {
        format!("{} dbname={}", self.server, self.name)
    }

    /// Runs `sql` in this database.
    fn run(&self, sql: &str) -> Result<(), String> {
        Self::exec(self.url(), sql)
    }

    /// Runs `sql` on the server's `postgres` database.
    fn admin(&self, sql: &str) -> Result<(), String> {
        Self::exec(format!("{} dbname=postgres", self.server), sql)
    }

    /// Runs `sql` at `url` on a thread of its own (the synchronous client cannot run inside
    /// the test's runtime).
    fn exec(url: String, sql: &str) -> Result<(), String> {
        let sql = sql.to_owned();
        std::thread::spawn(move || {
            let mut client =
                postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
            client.batch_execute(&sql).map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "admin thread panicked".to_string())?
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let Err(err) = self.admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )) {
            eprintln!("could not drop {}: {err}", self.name);
        }
    }
}

async fn restart_keeps_tasks(config: Config) {
    let alice = token("alice", &[]);
    let (queued, running) = {
        let broker = TestBroker::start(config.clone());
        let http = Api::new(broker.http_url(""), KEY);
        let queued = submit(&http, &alice, json!({"task": "later", "priority": "low"})).await;
        let running = submit(&http, &alice, json!({"task": "now", "priority": "urgent"})).await;
        let mut w = worker(&broker, "worker-1").await;
        let claimed = ask(&mut w, "task.claim", json!({})).await;
        assert_eq!(claimed["task"]["id"], running["id"], "urgent first");
        let running_id = running["id"].as_str().unwrap();
        ask(
            &mut w,
            "task.approval_request",
            json!({"taskId": running_id, "description": "x"}),
        )
        .await;
        broker.shutdown().await;
        (queued, running)
    };
    let broker = TestBroker::start(config);
    let http = Api::new(broker.http_url(""), KEY);
    for task in [&queued, &running] {
        let (status, detail) = http
            .call_as(
                "GET",
                &format!("/api/agent/{}", task["id"].as_str().unwrap()),
                Some(&alice),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(detail["data"]["task"]["status"], "pending", "{detail}");
    }
    let (_, detail) = http
        .call_as(
            "GET",
            &format!("/api/agent/{}", running["id"].as_str().unwrap()),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(
        detail["data"]["approvals"][0]["status"], "expired",
        "an approval asked before the restart is void: {detail}"
    );
    let mut w = worker(&broker, "worker-2").await;
    let claimed = ask(&mut w, "task.claim", json!({})).await;
    assert_eq!(claimed["task"]["id"], running["id"]);
    assert_eq!(claimed["task"]["attempts"], 2);
}
