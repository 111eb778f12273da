//! The ASAP mode against real servers: an in-process switchboard broker (`[asap]` with the
//! echo skill) over `ws://…/asap/ws` and `http://…/asap`, and the `asap-protocol` Python
//! package's reference server (its echo agent) started as a subprocess.
//!
//! The reference-server test needs a Python ≥ 3.13 with the pinned packages
//! (`tests/asap/requirements.txt` of the broker; `scripts/asap-venv.sh` makes the venv and
//! prints its interpreter): `SWITCHBOARD_ASAP_PYTHON` names the interpreter. Without it the
//! test prints SKIP and passes, unless `SWITCHBOARD_REQUIRE_ASAP=1` makes that a failure.

use crate::support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use support::chaos::ChaosProxy;
use support::{test_config, token, TestBroker, WAIT};
use switchboard_client::{
    AsapClient, AsapEnvelope, AsapEvent, AsapEvents, AsapOptions, Error, ASAP_PROTOCOL_VERSION,
};

/// The broker's own agent URN (`asap.agent_id`).
const BROKER: &str = "urn:asap:agent:switchboard";
/// Bound on one call in these tests.
const CALL: Duration = Duration::from_secs(10);

/// A broker serving ASAP with the echo skill; agents need a token.
fn asap_broker() -> TestBroker {
    let mut config = test_config();
    config.asap.enabled = true;
    config.asap.echo_skill = true;
    TestBroker::start(config)
}

fn ws_url(broker: &TestBroker) -> String {
    format!("ws://{}/asap/ws", broker.addr)
}

fn http_url(broker: &TestBroker) -> String {
    format!("http://{}/asap", broker.addr)
}

/// Options for the agent `urn:asap:agent:<name>`, with a token for the subject `name`.
fn agent(name: &str) -> AsapOptions {
    AsapOptions {
        timeout: CALL,
        connect_timeout: Duration::from_secs(5),
        ..AsapOptions::with_token(token(name, &[]))
    }
    .sender(format!("urn:asap:agent:{name}"))
}

async fn connect(url: &str, options: AsapOptions) -> AsapClient {
    AsapClient::connect(url, options)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// The next event, within [`WAIT`].
async fn next_event(events: &mut AsapEvents) -> AsapEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("event in time")
        .expect("event stream open")
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Asserts `answer` is the completed `task.response` to `request` from `from`, and returns
/// its result.
fn task_result<'a>(answer: &'a AsapEnvelope, request: &AsapEnvelope, from: &str) -> &'a Value {
    assert_eq!(answer.payload_type, "task.response", "{answer:?}");
    assert_eq!(answer.correlation_id.as_deref(), Some(request.id.as_str()));
    assert_eq!(answer.sender, from);
    assert_eq!(answer.recipient, request.sender);
    assert!(!answer.id.is_empty() && !answer.timestamp.is_empty());
    assert_eq!(answer.payload.get("status"), Some(&json!("completed")));
    answer.result().expect("a result")
}

fn expect_asap_error(result: Result<AsapEnvelope, Error>, code: i64, taxonomy: &str) -> Error {
    match result {
        Err(
            ref error @ Error::Asap {
                code: got,
                taxonomy: ref got_taxonomy,
                ..
            },
        ) if got == code && got_taxonomy.as_deref() == Some(taxonomy) => error.clone(),
        other => panic!("expected ASAP error {code} {taxonomy}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_skill_answers_and_errors_are_typed_over_websocket_and_http() {
    let broker = asap_broker();
    for (url, name, websocket) in [
        (ws_url(&broker), "echo-ws", true),
        (http_url(&broker), "echo-http", false),
    ] {
        let client = connect(&url, agent(name)).await;
        assert_eq!(client.is_websocket(), websocket);
        assert_eq!(client.sender(), format!("urn:asap:agent:{name}"));

        let request = client.task_request(BROKER, "echo", json!({"text": "hello", "n": 1}));
        assert_eq!(request.asap_version, ASAP_PROTOCOL_VERSION);
        let answer = client.send(&request).await.expect("echo answer");
        assert_eq!(
            task_result(&answer, &request, BROKER),
            &json!({"echoed": {"text": "hello", "n": 1}}),
            "{url}"
        );

        // No handler for the skill: -32012 with its taxonomy code.
        let unknown = client.task_request(BROKER, "no-such-skill", json!({}));
        let error = expect_asap_error(
            client.send(&unknown).await,
            -32012,
            "asap:transport/handler_not_found",
        );
        assert!(error.to_string().contains("-32012"), "{error}");

        // A malformed envelope (the sender is no agent URN): -32602, the field named.
        let mut malformed = client.task_request(BROKER, "echo", json!({}));
        malformed.sender = "not-a-urn".into();
        let error = expect_asap_error(
            client.send(&malformed).await,
            -32602,
            "asap:protocol/malformed_envelope",
        );
        let Error::Asap { data, .. } = error else {
            unreachable!()
        };
        let details = data.expect("error data")["details"].to_string();
        assert!(details.contains("sender"), "{details}");

        // A replayed nonce is refused the second time (-32003).
        let mut once = client.task_request(BROKER, "echo", json!({}));
        once.extensions = Some(object(json!({"nonce": format!("nonce-{}", once.id)})));
        client.send(&once).await.expect("first use of the nonce");
        expect_asap_error(
            client.send(&once).await,
            -32003,
            "asap:protocol/invalid_nonce",
        );

        // The connection is still usable after the errors, and a notification is taken.
        let again = client.task_request(BROKER, "echo", json!({"n": 2}));
        let answer = client.send(&again).await.expect("echo after errors");
        assert_eq!(task_result(&answer, &again, BROKER)["echoed"]["n"], 2);
        client
            .notify(&client.task_request(BROKER, "echo", json!({})))
            .await
            .expect("notification");
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_and_later_messages_arrive_as_events_on_the_websocket() {
    let broker = asap_broker();
    let client = connect(&ws_url(&broker), agent("acker")).await;
    let mut events = client.events().expect("a WebSocket has events");
    assert!(client.events().is_none(), "the events are given once");

    // The echo skill pushes one task.update first when asked to stream.
    let mut request = client.task_request(BROKER, "echo", json!({"q": "ack me"}));
    request.requires_ack = true;
    request
        .payload
        .insert("config".into(), json!({"streaming": true}));
    let answer = client.send(&request).await.expect("answer");
    task_result(&answer, &request, BROKER);

    // Both came before the answer, so both are waiting in the stream, the ack first.
    match next_event(&mut events).await {
        AsapEvent::Ack(ack) => {
            assert!(ack.is_ack());
            assert_eq!(ack.acknowledged_id(), Some(request.id.as_str()));
            assert_eq!(ack.payload.get("status"), Some(&json!("received")));
            assert_eq!(ack.recipient, request.sender);
        }
        other => panic!("expected the ack, got {other:?}"),
    }
    match next_event(&mut events).await {
        AsapEvent::Message(update) => {
            assert_eq!(update.payload_type, "task.update");
            assert_eq!(update.correlation_id.as_deref(), Some(request.id.as_str()));
            assert_eq!(update.payload["progress"]["percent"], 50);
        }
        other => panic!("expected the later message, got {other:?}"),
    }

    // A notification's failure has no call to fail: it comes as an event.
    let bad = client.task_request(BROKER, "no-such-skill", json!({}));
    client.notify(&bad).await.expect("queued");
    match next_event(&mut events).await {
        AsapEvent::Error(Error::Asap { code, .. }) => assert_eq!(code, -32012),
        other => panic!("expected the notification's error, got {other:?}"),
    }

    let http = connect(&http_url(&broker), agent("acker-http")).await;
    assert!(http.events().is_none(), "HTTP has no events");
    client.close().await;
    assert!(client.is_closed());
    assert!(
        tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("stream ends in time")
            .is_none(),
        "the event stream ends with the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_are_in_flight_on_one_websocket_and_each_gets_its_own_answer() {
    let broker = asap_broker();
    let client = connect(&ws_url(&broker), agent("busy")).await;
    let calls = (0..50).map(|n| {
        let client = client.clone();
        async move {
            let request = client.task_request(BROKER, "echo", json!({ "n": n }));
            let answer = client.send(&request).await.expect("answer");
            task_result(&answer, &request, BROKER)["echoed"]["n"]
                .as_u64()
                .expect("n")
        }
    });
    let answered: BTreeSet<u64> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect();
    assert_eq!(answered, (0..50).collect());
    // And over HTTP, on the client's connection pool.
    let http = connect(&http_url(&broker), agent("busy-http")).await;
    let calls = (0..20).map(|n| {
        let http = http.clone();
        async move {
            let request = http.task_request(BROKER, "echo", json!({ "n": n }));
            let answer = http.send(&request).await.expect("answer");
            task_result(&answer, &request, BROKER)["echoed"]["n"].clone()
        }
    });
    let answered = futures_util::future::join_all(calls).await;
    assert_eq!(answered, (0..20).map(|n| json!(n)).collect::<Vec<_>>());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_talk_to_each_other_through_the_broker() {
    let broker = asap_broker();
    const B: &str = "urn:asap:agent:rust-b";
    let b = connect(&ws_url(&broker), agent("rust-b")).await;
    assert_eq!(b.register([B]).await.expect("register"), vec![B.to_owned()]);
    let mut requests = b.events().expect("events");
    let (receipts_tx, mut receipts) = tokio::sync::mpsc::unbounded_channel();
    // Agent B: answers every task request with what it was asked, and reports the
    // broker's receipt for each reply.
    let serving = tokio::spawn(async move {
        while let Some(event) = requests.recv().await {
            let AsapEvent::Request(request) = event else {
                continue;
            };
            let asked = request.envelope();
            let input = asked.payload.get("input").cloned().unwrap_or_default();
            let answer = asked.task_response(json!({"served_by": "rust-b", "input": input}));
            let receipt = request.reply_with(&answer).await;
            let _ = receipts_tx.send((answer.id, receipt));
        }
    });

    let a_ws = connect(&ws_url(&broker), agent("rust-a")).await;
    let a_http = connect(&http_url(&broker), agent("rust-a-http")).await;
    for (a, text) in [(&a_ws, "over the socket"), (&a_http, "over HTTP")] {
        let request = a.task_request(B, "summarise", json!({ "text": text }));
        let answer = a.send(&request).await.expect("B's answer");
        assert_eq!(
            task_result(&answer, &request, B),
            &json!({"served_by": "rust-b", "input": {"text": text}})
        );
        let (reply_id, receipt) = tokio::time::timeout(WAIT, receipts.recv())
            .await
            .expect("receipt in time")
            .expect("B still serving");
        assert_eq!(reply_id, answer.id);
        let receipt = receipt.expect("the broker took B's reply");
        assert_eq!(receipt.acknowledged_id(), Some(reply_id.as_str()));
        assert_eq!(receipt.payload.get("status"), Some(&json!("processed")));
    }

    // A reply through the plain `reply` helper reaches the caller the same way.
    let c = connect(&ws_url(&broker), agent("rust-c")).await;
    const C: &str = "urn:asap:agent:rust-c";
    c.register([C]).await.expect("register C");
    let mut c_events = c.events().expect("events");
    let asking = tokio::spawn({
        let a = a_ws.clone();
        async move {
            let note = AsapEnvelope::new(
                a.sender(),
                C,
                "com.example.note",
                object(json!({"text": "hi"})),
            );
            a.send(&note).await
        }
    });
    let AsapEvent::Request(request) = next_event(&mut c_events).await else {
        panic!("expected a request for C");
    };
    assert_eq!(request.envelope().payload_type, "com.example.note");
    assert_eq!(request.envelope().sender, a_ws.sender());
    request
        .reply("com.example.noted", object(json!({"seen": true})))
        .await
        .expect("reply taken");
    let answer = asking.await.expect("task").expect("C's answer");
    assert_eq!(answer.payload_type, "com.example.noted");
    assert_eq!(answer.sender, C);
    assert_eq!(answer.payload.get("seen"), Some(&json!(true)));

    // A URN another connection serves cannot be taken; HTTP cannot serve at all; an
    // envelope for an agent nobody serves fails at once.
    let thief = connect(&ws_url(&broker), agent("thief")).await;
    match thief.register([B]).await {
        Err(Error::Asap { code: -32034, .. }) => {}
        other => panic!("expected -32034, got {other:?}"),
    }
    assert!(matches!(
        a_http.register(["urn:asap:agent:rust-a-http"]).await,
        Err(Error::Unsupported(_))
    ));
    let nobody = a_ws.task_request("urn:asap:agent:nobody", "x", json!({}));
    expect_asap_error(
        a_ws.send(&nobody).await,
        -32032,
        "asap:transport/connection_error",
    );

    b.close().await;
    tokio::time::timeout(WAIT, serving)
        .await
        .expect("B's event stream ends when B closes")
        .expect("B's task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_time_out_and_a_dropped_connection_fails_calls_in_flight() {
    let broker = asap_broker();
    const SILENT: &str = "urn:asap:agent:silent";
    let silent = connect(&ws_url(&broker), agent("silent")).await;
    silent.register([SILENT]).await.expect("register");
    let mut held = silent.events().expect("events");

    // An answer that does not come in time: Error::Timeout after the client's bound.
    let impatient = connect(
        &ws_url(&broker),
        AsapOptions {
            timeout: Duration::from_millis(300),
            ..agent("impatient")
        },
    )
    .await;
    let started = Instant::now();
    match impatient
        .send(&impatient.task_request(SILENT, "wait", json!({})))
        .await
    {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < WAIT);
    assert!(matches!(next_event(&mut held).await, AsapEvent::Request(_)));

    // A call in flight when its connection drops fails at once, whatever the way it drops
    // (closed, cut inside a frame, half-closed: the proxy picks), and so does any later call.
    let proxy = ChaosProxy::start(broker.addr, 7, false).await;
    let mut faults = BTreeSet::new();
    for round in 0..30 {
        let name = format!("waiting-{round}");
        let waiting = connect(&format!("ws://{}/asap/ws", proxy.addr), agent(&name)).await;
        let mut waiting_events = waiting.events().expect("events");
        let call = tokio::spawn({
            let waiting = waiting.clone();
            async move {
                waiting
                    .send(&waiting.task_request(SILENT, "wait", json!({})))
                    .await
            }
        });
        // Forwarded to the silent agent: the call is in flight.
        assert!(matches!(next_event(&mut held).await, AsapEvent::Request(_)));
        let started = Instant::now();
        let fault = proxy.cut().expect("a live connection to cut");
        let result = tokio::time::timeout(WAIT, call)
            .await
            .unwrap_or_else(|_| panic!("{fault}: the call ends, it does not hang"))
            .expect("task");
        assert_eq!(result, Err(Error::ConnectionLost), "{fault}");
        assert!(
            started.elapsed() < CALL,
            "{fault}: failed before its own timeout"
        );
        assert!(waiting.is_closed(), "{fault}");
        match waiting
            .send(&waiting.task_request(BROKER, "echo", json!({})))
            .await
        {
            Err(Error::Closed { .. }) => {}
            other => panic!("{fault}: expected Closed, got {other:?}"),
        }
        assert!(
            tokio::time::timeout(WAIT, waiting_events.recv())
                .await
                .expect("stream ends in time")
                .is_none(),
            "{fault}: the event stream ends with the connection"
        );
        faults.insert(fault.to_string());
        if faults.len() == 3 {
            break;
        }
    }
    assert_eq!(faults.len(), 3, "every kind of cut was tried: {faults:?}");

    // The broker shutting down (close code 1012) ends the connection: later calls say so.
    // (Nothing may be in flight for a prompt shutdown: the impatient call still waits.)
    silent.close().await;
    impatient.close().await;
    let direct = connect(&ws_url(&broker), agent("direct")).await;
    let mut direct_events = direct.events().expect("events");
    // One round trip first: the broker's session is running (the upgrade alone does not
    // say so, and a session still starting is dropped without a close frame).
    direct
        .send(&direct.task_request(BROKER, "echo", json!({})))
        .await
        .expect("echo");
    broker.shutdown().await;
    assert!(
        tokio::time::timeout(WAIT, direct_events.recv())
            .await
            .expect("stream ends in time")
            .is_none(),
        "the event stream ends with the connection"
    );
    match direct
        .send(&direct.task_request(BROKER, "echo", json!({})))
        .await
    {
        Err(Error::Closed { code, reason }) => {
            assert_eq!(code, Some(1012), "broker restart: {reason}")
        }
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_and_a_refusal_is_typed() {
    let broker = asap_broker();
    let anonymous = AsapOptions {
        timeout: CALL,
        ..AsapOptions::default()
    };
    let http = connect(&http_url(&broker), anonymous.clone()).await;
    match http
        .send(&http.task_request(BROKER, "echo", json!({})))
        .await
    {
        Err(Error::AsapRefused { status: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    // The broker takes the upgrade, then closes with 4000: the client ends, and its calls
    // say why.
    let ws = connect(&ws_url(&broker), anonymous.clone()).await;
    let mut events = ws.events().expect("events");
    assert!(
        tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("the broker closes in time")
            .is_none(),
        "no events, the stream ends"
    );
    match ws.send(&ws.task_request(BROKER, "echo", json!({}))).await {
        Err(Error::Closed {
            code: Some(4000),
            reason,
        }) => assert!(reason.contains("token"), "{reason}"),
        other => panic!("expected Closed with 4000, got {other:?}"),
    }
    let bad = AsapOptions {
        token: "not-a-jwt".into(),
        ..anonymous
    };
    let http = connect(&http_url(&broker), bad).await;
    assert!(matches!(
        http.send(&http.task_request(BROKER, "echo", json!({})))
            .await,
        Err(Error::AsapRefused { status: 401, .. })
    ));
    assert!(matches!(
        AsapClient::connect("ftp://127.0.0.1/asap", AsapOptions::default()).await,
        Err(Error::InvalidUrl(_))
    ));
    // Nothing listens on a port just released: a transport error, not a hang.
    let closed_port = free_port();
    let nowhere = connect(&format!("http://{closed_port}/asap"), agent("nowhere")).await;
    assert!(matches!(
        nowhere
            .send(&nowhere.task_request(BROKER, "echo", json!({})))
            .await,
        Err(Error::Transport(_))
    ));
    assert!(matches!(
        AsapClient::connect(&format!("ws://{closed_port}/asap/ws"), agent("nowhere")).await,
        Err(Error::Transport(_))
    ));
}

// --- The asap-protocol package's reference server -------------------------------------

/// The interpreter of `SWITCHBOARD_ASAP_PYTHON`, if it can import `asap`; `None` (the test
/// skips) otherwise, unless `SWITCHBOARD_REQUIRE_ASAP=1`.
fn python() -> Option<String> {
    let required = std::env::var("SWITCHBOARD_REQUIRE_ASAP").as_deref() == Ok("1");
    let python = std::env::var("SWITCHBOARD_ASAP_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    let usable = python.as_ref().is_some_and(|py| {
        Command::new(py)
            .args(["-c", "import asap.examples.echo_agent, uvicorn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    match (usable, required) {
        (true, _) => python,
        (false, true) => panic!(
            "SWITCHBOARD_REQUIRE_ASAP=1 but SWITCHBOARD_ASAP_PYTHON ({python:?}) cannot import \
             asap (make the venv with scripts/asap-venv.sh)"
        ),
        (false, false) => {
            eprintln!(
                "SKIP: set SWITCHBOARD_ASAP_PYTHON to a Python >= 3.13 with asap-protocol \
                 installed (scripts/asap-venv.sh prints one) to run the reference-server test"
            );
            None
        }
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The package's echo agent (`asap.examples.echo_agent`: its `create_app` with the echo
/// handler, on uvicorn), killed when dropped.
struct ReferenceServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ReferenceServer {
    fn start(python: &str) -> ReferenceServer {
        let addr = free_port();
        let log = std::env::temp_dir().join(format!(
            "switchboard-client-asap-reference-{}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(python)
            .args(["-m", "asap.examples.echo_agent", "--host", "127.0.0.1"])
            .args(["--port", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the reference server");
        let mut server = ReferenceServer { child, addr, log };
        server.wait_ready();
        server
    }

    /// Polls a TCP connect (bounded retries) until uvicorn listens; fails at once if the
    /// process exited.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)).is_ok() {
                return;
            }
            let exited = self.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the reference server did not listen on {} (exit status {exited:?}):\n{}",
                self.addr,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_server_echoes_over_http_and_websocket() {
    let Some(python) = python() else { return };
    let server = tokio::task::spawn_blocking(move || ReferenceServer::start(&python))
        .await
        .expect("start task");
    const ECHO_AGENT: &str = "urn:asap:agent:echo-agent";
    let options = AsapOptions {
        timeout: CALL,
        ..AsapOptions::default()
    }
    .sender("urn:asap:agent:rust-tester");

    // HTTP: POST /asap with ASAP-Version.
    let http = connect(&format!("http://{}/asap", server.addr), options.clone()).await;
    let request = http.task_request(ECHO_AGENT, "echo", json!({"hello": "reference"}));
    let answer = http
        .send(&request)
        .await
        .expect("the reference server's echo");
    assert_eq!(
        task_result(&answer, &request, ECHO_AGENT),
        &json!({"echoed": {"hello": "reference"}})
    );
    let unknown = AsapEnvelope::new(
        http.sender(),
        ECHO_AGENT,
        "com.example.unknown",
        object(json!({"x": 1})),
    );
    match http.send(&unknown).await {
        Err(Error::Asap { code, .. }) => assert_eq!(code, -32012, "no handler"),
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }

    // WebSocket: /asap/ws, with the acknowledgement the reference server sends first.
    let ws = connect(&format!("ws://{}/asap/ws", server.addr), options).await;
    let mut events = ws.events().expect("events");
    let mut request = ws.task_request(ECHO_AGENT, "echo", json!({"over": "websocket"}));
    request.requires_ack = true;
    let answer = ws.send(&request).await.expect("the echo over WebSocket");
    assert_eq!(
        task_result(&answer, &request, ECHO_AGENT),
        &json!({"echoed": {"over": "websocket"}})
    );
    match next_event(&mut events).await {
        AsapEvent::Ack(ack) => assert_eq!(ack.acknowledged_id(), Some(request.id.as_str())),
        other => panic!("expected the ack, got {other:?}"),
    }
    ws.close().await;
    drop(server);
}
