//! The scenarios: `rooms` (and `fanout`, which is one room), `idle` and `churn`.
//!
//! Everything runs on one thread (a current-thread runtime and a `LocalSet`): publisher and
//! subscribers share one monotonic clock, so end-to-end latency is simply the receive
//! instant minus the send instant embedded in the payload.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use memchr::memmem;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::procfs;
use crate::proto::{Conn, Endpoint, Error, Event};
use crate::report::Report;

/// Settings every scenario shares.
pub struct Common {
    /// Where and how to connect: the publisher's broker (the first `--url`).
    pub ep: Endpoint,
    /// Every broker, `ep` first: other connections go round-robin over them.
    pub sub_eps: Vec<Endpoint>,
    /// The broker's process ids (several for a cluster), for CPU and memory (summed).
    pub broker_pids: Vec<String>,
    /// A Redis server's process id, for its CPU (fanout/rooms).
    pub redis_pid: Option<String>,
    /// Connections opened concurrently per batch.
    pub batch: usize,
    /// Pause between batches.
    pub batch_pause: Duration,
    /// Payload size in bytes.
    pub payload: usize,
    /// How long to wait for missing deliveries after the last publish, without progress.
    pub drain_timeout: Duration,
    /// MQTT: how often a client sends PINGREQ.
    pub client_ping: Duration,
}

impl Common {
    /// The endpoint of the `i`-th non-publisher connection: round-robin over `sub_eps`.
    pub fn sub_ep(&self, i: usize) -> &Endpoint {
        if self.sub_eps.is_empty() {
            &self.ep
        } else {
            &self.sub_eps[i % self.sub_eps.len()]
        }
    }
}

/// State shared by every task of a scenario (one thread, so `Cell`s).
pub struct Shared {
    epoch: Instant,
    delivered: Cell<u64>,
    last_delivery: Cell<Option<Instant>>,
    wake_at: Cell<u64>,
    notify: Notify,
    latency_us: RefCell<Histogram<u64>>,
    out_of_order: Cell<u64>,
    dropped: Cell<u64>,
    pings: Cell<u64>,
    errors: RefCell<Vec<String>>,
    error_count: Cell<u64>,
    peak_rss_kib: Cell<u64>,
    /// Deliveries slower than this are printed to stderr (`LOADGEN_TRACE_SLOW_MS`).
    trace_slow_us: Option<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Shared {
    fn new() -> Rc<Shared> {
        Rc::new(Shared {
            epoch: Instant::now(),
            delivered: Cell::new(0),
            last_delivery: Cell::new(None),
            wake_at: Cell::new(u64::MAX),
            notify: Notify::new(),
            latency_us: RefCell::new(histogram()),
            out_of_order: Cell::new(0),
            dropped: Cell::new(0),
            pings: Cell::new(0),
            errors: RefCell::new(Vec::new()),
            error_count: Cell::new(0),
            peak_rss_kib: Cell::new(0),
            trace_slow_us: std::env::var("LOADGEN_TRACE_SLOW_MS")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .map(|ms| (ms * 1000.0) as u64),
        })
    }

    fn error(&self, what: String) {
        self.error_count.set(self.error_count.get() + 1);
        let mut errors = self.errors.borrow_mut();
        if errors.len() < 5 {
            errors.push(what);
        }
    }

    /// Microseconds since the scenario started (the clock embedded in payloads).
    fn now_us(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_micros() as u64
    }

    fn record_delivery(&self, data: &[u8], now: Instant, last_seq: &mut Option<u64>, idx: usize) {
        match parse_stamp(data) {
            Some((t, s)) => {
                let now_us = self.now_us(now);
                let lat = now_us.saturating_sub(t).max(1);
                let _ = self.latency_us.borrow_mut().record(lat);
                if self.trace_slow_us.is_some_and(|slow| lat >= slow) {
                    eprintln!(
                        "slow delivery: conn {idx} seq {s} sent at {:.3} ms latency {:.3} ms",
                        t as f64 / 1000.0,
                        lat as f64 / 1000.0
                    );
                }
                if last_seq.is_some_and(|l| s <= l) {
                    self.out_of_order.set(self.out_of_order.get() + 1);
                }
                *last_seq = Some(s);
            }
            None => self.error(format!(
                "delivery without a timestamp: {:?}",
                String::from_utf8_lossy(&data[..data.len().min(200)])
            )),
        }
    }

    fn add_delivered(&self, n: u64, now: Instant) {
        let d = self.delivered.get() + n;
        self.delivered.set(d);
        self.last_delivery.set(Some(now));
        if d >= self.wake_at.get() {
            self.wake_at.set(u64::MAX);
            self.notify.notify_one();
        }
    }

    /// Waits until `delivered >= target`, or `timeout` passes without progress.
    async fn wait_delivered(&self, target: u64, timeout: Duration) -> bool {
        loop {
            let before = self.delivered.get();
            if before >= target {
                return true;
            }
            self.wake_at.set(target);
            if tokio::time::timeout(timeout, self.notify.notified())
                .await
                .is_err()
                && self.delivered.get() == before
            {
                self.wake_at.set(u64::MAX);
                return false;
            }
        }
    }
}

const STAMP: &[u8] = b"{\"t\":";

/// Writes a payload of exactly `size` bytes (at least 40): `{"t":<µs>,"s":<seq>,"p":"xx…"}`.
pub fn make_payload(out: &mut Vec<u8>, t_us: u64, seq: u64, size: usize) {
    out.clear();
    out.extend_from_slice(STAMP);
    out.extend_from_slice(t_us.to_string().as_bytes());
    out.extend_from_slice(b",\"s\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"p\":\"");
    let pad = size.saturating_sub(out.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

fn digits(data: &[u8]) -> Option<(u64, usize)> {
    let n = data.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let v = data[..n]
        .iter()
        .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
    Some((v, n))
}

/// Finds the payload in a delivery and reads its send time and sequence number.
pub fn parse_stamp(data: &[u8]) -> Option<(u64, u64)> {
    // Built once: `memmem::find` would build a searcher for every delivery.
    static FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(STAMP));
    let at = FINDER.find(data)? + STAMP.len();
    let (t, n) = digits(&data[at..])?;
    let rest = data[at + n..].strip_prefix(b",\"s\":")?;
    let (s, _) = digits(rest)?;
    Some((t, s))
}

/// A member connection's reader: counts deliveries (when `count`) and answers heartbeats,
/// until the connection ends or the task is aborted.
async fn member(mut conn: Conn, sh: Rc<Shared>, count: bool, client_ping: Duration, idx: usize) {
    let mut last_seq = None;
    let mut keepalive = conn.keepalive_frame().map(|_| {
        // Spread client pings over the interval.
        let spread = client_ping.as_millis().max(1) as u64;
        let first = Duration::from_millis((idx as u64 * 7919) % spread);
        tokio::time::interval_at(tokio::time::Instant::now() + first, client_ping)
    });
    loop {
        let next = match keepalive.as_mut() {
            Some(iv) => tokio::select! {
                m = conn.ws.next() => m,
                _ = iv.tick() => {
                    if let Some(f) = conn.keepalive_frame() {
                        if let Err(e) = conn.send(f).await {
                            sh.error(format!("keepalive: {e}"));
                            sh.dropped.set(sh.dropped.get() + 1);
                            return;
                        }
                    }
                    continue;
                }
            },
            None => conn.ws.next().await,
        };
        let msg = match next {
            Some(Ok(Message::Close(c))) => {
                sh.error(format!("closed by the server: {c:?}"));
                sh.dropped.set(sh.dropped.get() + 1);
                return;
            }
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                sh.error(format!("read: {e}"));
                sh.dropped.set(sh.dropped.get() + 1);
                return;
            }
            None => {
                sh.error("connection closed by the server".into());
                sh.dropped.set(sh.dropped.get() + 1);
                return;
            }
        };
        let now = Instant::now();
        let mut n = 0;
        conn.dec.feed(&msg, &mut |e| match e {
            Event::Delivery(d) if count => {
                n += 1;
                sh.record_delivery(d, now, &mut last_seq, idx);
            }
            // Server pings answered, or (MQTT) answers to our PINGREQs.
            Event::Ping | Event::Pong => sh.pings.set(sh.pings.get() + 1),
            Event::Error(s) => sh.error(s),
            _ => {}
        });
        if n > 0 {
            sh.add_delivered(n, now);
        }
        if let Err(e) = conn.send_replies().await {
            sh.error(format!("reply: {e}"));
            sh.dropped.set(sh.dropped.get() + 1);
            return;
        }
    }
}

/// Samples the broker's resident memory (summed over its processes) every 100 ms, keeping
/// the peak.
fn spawn_rss_sampler(sh: &Rc<Shared>, pids: &[String]) -> Option<JoinHandle<()>> {
    if pids.is_empty() {
        return None;
    }
    let pids = pids.to_vec();
    let sh = sh.clone();
    Some(tokio::task::spawn_local(async move {
        loop {
            if let Some(m) = procfs::memory_all(&pids) {
                sh.peak_rss_kib.set(sh.peak_rss_kib.get().max(m.rss_kib));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

/// Connect statistics of one ramp.
struct Ramp {
    handles: Vec<JoinHandle<()>>,
    /// Indices of the connections that connected and joined.
    ok: Vec<usize>,
    connected: u64,
    errors: u64,
    total: Duration,
    connect_us: Histogram<u64>,
}

impl Ramp {
    fn report(&self, r: &mut Report) {
        r.set("conns", self.connected + self.errors);
        r.set("connected", self.connected);
        r.set("connect_errors", self.errors);
        r.set("connect_total_s", secs(self.total));
        if self.connected > 0 {
            r.set(
                "connect_per_s",
                self.connected as f64 / self.total.as_secs_f64(),
            );
            r.set("connect_p50_ms", ms(self.connect_us.value_at_quantile(0.5)));
            r.set(
                "connect_p99_ms",
                ms(self.connect_us.value_at_quantile(0.99)),
            );
            r.set("connect_max_ms", ms(self.connect_us.max()));
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Opens `n` connections in batches, each joining `room_of(i)`, and starts a member task
/// on each one.
async fn ramp(
    common: &Common,
    sh: &Rc<Shared>,
    n: usize,
    count: bool,
    room_of: impl Fn(usize) -> String,
) -> Ramp {
    let mut ramp = Ramp {
        handles: Vec::with_capacity(n),
        ok: Vec::with_capacity(n),
        connected: 0,
        errors: 0,
        total: Duration::ZERO,
        connect_us: histogram(),
    };
    let start = Instant::now();
    let pid = std::process::id();
    let mut i = 0;
    while i < n {
        let end = (i + common.batch.max(1)).min(n);
        let batch: Vec<_> = (i..end)
            .map(|idx| {
                let ep = common.sub_ep(idx).clone();
                let room = room_of(idx);
                tokio::task::spawn_local(async move {
                    let t0 = Instant::now();
                    let mut conn = Conn::open(&ep, &format!("lg-{pid}-{idx}")).await?;
                    conn.join(&room).await?;
                    Ok::<_, Error>((conn, t0.elapsed()))
                })
            })
            .collect();
        for (k, h) in batch.into_iter().enumerate() {
            match h.await {
                Ok(Ok((conn, took))) => {
                    ramp.connected += 1;
                    ramp.ok.push(i + k);
                    let _ = ramp.connect_us.record((took.as_micros() as u64).max(1));
                    ramp.handles.push(tokio::task::spawn_local(member(
                        conn,
                        sh.clone(),
                        count,
                        common.client_ping,
                        i + k,
                    )));
                }
                Ok(Err(e)) => {
                    ramp.errors += 1;
                    sh.error(format!("connect: {e}"));
                }
                Err(e) => {
                    ramp.errors += 1;
                    sh.error(format!("connect task: {e}"));
                }
            }
        }
        i = end;
        if i < n && !common.batch_pause.is_zero() {
            tokio::time::sleep(common.batch_pause).await;
        }
    }
    ramp.total = start.elapsed();
    ramp
}

fn abort_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        h.abort();
    }
}

/// The broker under test: one process, or the nodes of a cluster (summed).
struct Broker {
    pids: Vec<String>,
}

impl Broker {
    fn new(common: &Common) -> Broker {
        Broker {
            pids: common.broker_pids.clone(),
        }
    }
    fn cpu(&self) -> Option<procfs::Cpu> {
        procfs::Cpu::read_all(&self.pids)
    }
    fn mem(&self) -> Option<procfs::Memory> {
        procfs::memory_all(&self.pids)
    }
}

fn self_cpu() -> Option<procfs::Cpu> {
    procfs::Cpu::read("self")
}

fn finish_common(r: &mut Report, sh: &Shared) {
    r.set("dropped", sh.dropped.get());
    r.set("errors", sh.error_count.get());
    r.set("first_errors", json!(*sh.errors.borrow()));
}

/// The `rooms` scenario (`fanout` is `rooms = 1`).
pub struct RoomsPlan {
    /// Number of rooms.
    pub rooms: usize,
    /// Subscribers in each room.
    pub per_room: usize,
    /// Messages the publisher sends (round-robin over the rooms).
    pub messages: u64,
    /// Messages per second, or as fast as the window allows.
    pub rate: Option<f64>,
    /// At most this many messages in flight (published, not yet delivered to every
    /// subscriber); `0` = unlimited.
    pub window: u64,
    /// Room name prefix.
    pub prefix: String,
}

/// Runs `rooms`/`fanout`.
pub async fn rooms(common: &Common, plan: &RoomsPlan, r: &mut Report) {
    let sh = Shared::new();
    let broker = Broker::new(common);
    let target = common.ep.target;
    let room_names: Vec<String> = (0..plan.rooms)
        .map(|i| target.room(&plan.prefix, i))
        .collect();
    r.set("rooms", plan.rooms);
    r.set("subs_per_room", plan.per_room);
    r.set("messages", plan.messages);
    r.set("rate", plan.rate.map_or(Value::Null, |x| json!(x)));
    r.set("window", plan.window);
    r.set("payload_bytes", common.payload);
    let base = broker.mem();
    let sampler = spawn_rss_sampler(&sh, &broker.pids);

    let subs = plan.rooms * plan.per_room;
    let names = room_names.clone();
    let ramp = ramp(common, &sh, subs, true, move |i| {
        names[i % plan.rooms].clone()
    })
    .await;
    ramp.report(r);

    // The publisher.
    let mut publisher =
        match Conn::open(&common.ep, &format!("lg-{}-pub", std::process::id())).await {
            Ok(c) => c,
            Err(e) => {
                sh.error(format!("publisher connect: {e}"));
                finish_common(r, &sh);
                abort_all(ramp.handles);
                return;
            }
        };
    if target.publisher_joins() {
        for room in &room_names {
            if let Err(e) = publisher.join(room).await {
                sh.error(format!("publisher join: {e}"));
                finish_common(r, &sh);
                abort_all(ramp.handles);
                return;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Subscribers per room that actually joined (all of them, unless some failed).
    let mut counts = vec![0u64; plan.rooms.max(1)];
    for &i in &ramp.ok {
        counts[i % plan.rooms.max(1)] += 1;
    }
    let expected = Expected::new(counts);
    let expected_total = expected.upto(plan.messages);
    let cpu0 = broker.cpu();
    let redis0 = common.redis_pid.as_deref().and_then(procfs::Cpu::read);
    let me0 = self_cpu();
    let start = Instant::now();
    let sent = publish(
        &mut publisher,
        &sh,
        plan,
        &room_names,
        &expected,
        common.payload,
    )
    .await;
    let publish_done = Instant::now();
    // Keep reading the publisher's socket (its own echoes, acks, heartbeats) meanwhile.
    let pub_reader = tokio::task::spawn_local(member(
        publisher,
        sh.clone(),
        false,
        common.client_ping,
        usize::MAX / 2,
    ));
    let complete = sh
        .wait_delivered(expected_total, common.drain_timeout)
        .await;
    let cpu1 = broker.cpu();
    let redis1 = common.redis_pid.as_deref().and_then(procfs::Cpu::read);
    let me1 = self_cpu();
    let end = sh
        .last_delivery
        .get()
        .unwrap_or(publish_done)
        .max(publish_done);
    let delivered = sh.delivered.get();
    let window = end.duration_since(start);
    let end_mem = broker.mem();
    if let Some(s) = sampler {
        s.abort();
    }
    pub_reader.abort();
    abort_all(ramp.handles);

    r.set("sent", sent);
    r.set("expected", expected_total);
    r.set("delivered", delivered);
    r.set("lost", expected_total.saturating_sub(delivered));
    r.set(
        "loss_pct",
        if expected_total > 0 {
            100.0 * expected_total.saturating_sub(delivered) as f64 / expected_total as f64
        } else {
            0.0
        },
    );
    r.set("complete", complete);
    r.set("out_of_order", sh.out_of_order.get());
    r.set("duration_s", secs(window));
    r.set("publish_s", secs(publish_done.duration_since(start)));
    r.set(
        "publish_per_s",
        sent as f64 / publish_done.duration_since(start).as_secs_f64().max(1e-9),
    );
    r.set(
        "deliveries_per_s",
        delivered as f64 / window.as_secs_f64().max(1e-9),
    );
    let lat = sh.latency_us.borrow();
    if !lat.is_empty() {
        r.set("lat_p50_ms", ms(lat.value_at_quantile(0.5)));
        r.set("lat_p90_ms", ms(lat.value_at_quantile(0.9)));
        r.set("lat_p99_ms", ms(lat.value_at_quantile(0.99)));
        r.set("lat_p999_ms", ms(lat.value_at_quantile(0.999)));
        r.set("lat_max_ms", ms(lat.max()));
        r.set(
            "lat_over_10ms",
            lat.count_between(10_001, lat.max().max(10_001)),
        );
    }
    // Broker CPU from just before the first publish to the last delivery.
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        let cpu = c1.since(&c0);
        r.set("broker_cpu_s", cpu);
        r.set("broker_cpu_pct", 100.0 * cpu / secs(window).max(1e-9));
        if delivered > 0 {
            r.set("us_per_delivery", cpu * 1e6 / delivered as f64);
        }
    }
    // Redis CPU over the same window.
    if let (Some(c0), Some(c1)) = (redis0, redis1) {
        let cpu = c1.since(&c0);
        r.set("redis_cpu_s", cpu);
        r.set("redis_cpu_pct", 100.0 * cpu / secs(window).max(1e-9));
        if delivered > 0 {
            r.set("redis_us_per_delivery", cpu * 1e6 / delivered as f64);
        }
    } else if common.redis_pid.is_some() {
        sh.error("cannot read the Redis server's CPU time from /proc".into());
    }
    if let (Some(m0), Some(m1)) = (me0, me1) {
        let me = m1.since(&m0);
        r.set("loadgen_cpu_s", me);
        r.set("loadgen_cpu_pct", 100.0 * me / secs(window).max(1e-9));
    }
    mem_report(r, base, end_mem, sh.peak_rss_kib.get());
    finish_common(r, &sh);
}

fn mem_report(
    r: &mut Report,
    base: Option<procfs::Memory>,
    end: Option<procfs::Memory>,
    peak: u64,
) {
    if let Some(b) = base {
        r.set("broker_rss_base_kib", b.rss_kib);
    }
    if let Some(e) = end {
        r.set("broker_rss_end_kib", e.rss_kib);
        r.set("broker_rss_peak_kib", peak.max(e.rss_kib));
        r.set("broker_hwm_kib", e.hwm_kib);
    }
}

/// Deliveries expected for the first n messages, published round-robin over rooms with
/// `counts[r]` subscribers each.
struct Expected {
    counts: Vec<u64>,
    prefix: Vec<u64>,
}

impl Expected {
    fn new(counts: Vec<u64>) -> Expected {
        let mut prefix = vec![0];
        for c in &counts {
            prefix.push(prefix.last().copied().unwrap_or(0) + c);
        }
        Expected { counts, prefix }
    }

    fn upto(&self, n: u64) -> u64 {
        let r = self.counts.len() as u64;
        let total = self.prefix[self.counts.len()];
        (n / r) * total + self.prefix[(n % r) as usize]
    }
}

/// Sends the plan's messages, paced by `rate` and/or the in-flight window; returns how
/// many were sent.
async fn publish(
    conn: &mut Conn,
    sh: &Shared,
    plan: &RoomsPlan,
    rooms: &[String],
    expected: &Expected,
    payload_size: usize,
) -> u64 {
    let start = Instant::now();
    let interval = plan
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-6)));
    let due = |i: u64| interval.map(|iv| start + iv.mul_f64(i as f64));
    let mut payload = Vec::with_capacity(payload_size + 32);
    let mut i = 0u64;
    while i < plan.messages {
        // Send everything that is due and fits in the window, flushing every 64 frames.
        let mut fed = 0;
        let mut window_blocked = false;
        let now = Instant::now();
        while i < plan.messages && fed < 64 {
            if plan.window > 0 && i >= plan.window {
                let need = expected.upto(i - plan.window + 1);
                if sh.delivered.get() < need {
                    window_blocked = true;
                    sh.wake_at.set(need);
                    break;
                }
            }
            if due(i).is_some_and(|d| d > now) {
                break;
            }
            let t = sh.now_us(Instant::now());
            make_payload(&mut payload, t, i, payload_size);
            let room = &rooms[(i % rooms.len() as u64) as usize];
            if let Err(e) = conn.ws.feed(conn.target.publish(room, &payload)).await {
                sh.error(format!("publish: {e}"));
                return i;
            }
            i += 1;
            fed += 1;
        }
        if fed > 0 {
            if let Err(e) = conn.ws.flush().await {
                sh.error(format!("publish flush: {e}"));
                return i;
            }
        }
        if i >= plan.messages {
            break;
        }
        if fed >= 64 && !window_blocked {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep_until = due(i).unwrap_or(now + Duration::from_secs(3600));
        let stall = Duration::from_secs(30);
        tokio::select! {
            biased;
            m = conn.ws.next() => {
                match m {
                    Some(Ok(Message::Close(c))) => {
                        sh.error(format!("publisher closed by the server: {c:?}"));
                        return i;
                    }
                    Some(Ok(m)) => {
                        conn.dec.feed(&m, &mut |e| {
                            if let Event::Error(s) = e {
                                sh.error(s);
                            }
                        });
                        if let Err(e) = conn.send_replies().await {
                            sh.error(format!("publisher reply: {e}"));
                            return i;
                        }
                    }
                    Some(Err(e)) => {
                        sh.error(format!("publisher read: {e}"));
                        return i;
                    }
                    None => {
                        sh.error("publisher closed by the server".into());
                        return i;
                    }
                }
            }
            _ = sh.notify.notified(), if window_blocked => {}
            _ = tokio::time::sleep_until(sleep_until.into()), if !window_blocked => {}
            _ = tokio::time::sleep(stall), if window_blocked => {
                sh.error(format!("publisher stalled {stall:?}: deliveries stopped; giving up"));
                return i;
            }
        }
    }
    i
}

/// The `idle` scenario: `conns` connections spread over `rooms` rooms, held `hold`,
/// answering heartbeats. `hold = 0` measures only the connect-and-join ramp.
pub async fn idle(common: &Common, conns: usize, rooms: usize, hold: Duration, r: &mut Report) {
    let sh = Shared::new();
    let broker = Broker::new(common);
    let target = common.ep.target;
    r.set("rooms", rooms);
    r.set("hold_s", secs(hold));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = broker.mem();
    let sampler = spawn_rss_sampler(&sh, &broker.pids);
    let ramp = ramp(common, &sh, conns, false, |i| {
        target.room("idle", i % rooms.max(1))
    })
    .await;
    ramp.report(r);
    let after_ramp = broker.mem();
    let cpu0 = broker.cpu();
    let t0 = Instant::now();
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    let held = t0.elapsed();
    let cpu1 = broker.cpu();
    let end = broker.mem();
    if let Some(s) = sampler {
        s.abort();
    }
    abort_all(ramp.handles);
    r.set("alive", ramp.connected - sh.dropped.get());
    r.set("pings", sh.pings.get());
    if let Some(m) = after_ramp {
        r.set("broker_rss_ramp_kib", m.rss_kib);
    }
    mem_report(r, base, end, sh.peak_rss_kib.get());
    if let (Some(b), Some(e)) = (base, end) {
        if ramp.connected > 0 {
            let per = (e.rss_kib as f64 - b.rss_kib as f64) / ramp.connected as f64;
            r.set("kib_per_conn", per);
        }
    }
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        let cpu = c1.since(&c0);
        r.set("broker_cpu_s", cpu);
        if !held.is_zero() {
            r.set("broker_cpu_pct", 100.0 * cpu / held.as_secs_f64());
        }
    }
    finish_common(r, &sh);
}

/// The `churn` scenario: `concurrency` workers loop connect → join → leave → close until
/// `count` cycles are done or `duration` has passed.
pub async fn churn(
    common: &Common,
    concurrency: usize,
    count: u64,
    duration: Duration,
    rooms: usize,
    r: &mut Report,
) {
    let sh = Shared::new();
    let broker = Broker::new(common);
    let target = common.ep.target;
    r.set("concurrency", concurrency);
    r.set("rooms", rooms);
    let base = broker.mem();
    let sampler = spawn_rss_sampler(&sh, &broker.pids);
    let cpu0 = broker.cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let next = Rc::new(Cell::new(0u64));
    let done = Rc::new(Cell::new(0u64));
    let cycle_us = Rc::new(RefCell::new(histogram()));
    let connect_us = Rc::new(RefCell::new(histogram()));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, done, cycle_us, connect_us) = (
                next.clone(),
                done.clone(),
                cycle_us.clone(),
                connect_us.clone(),
            );
            let sh = sh.clone();
            let eps: Vec<Endpoint> = (0..common.sub_eps.len().max(1))
                .map(|k| common.sub_ep(k).clone())
                .collect();
            tokio::task::spawn_local(async move {
                loop {
                    let i = next.get();
                    if i >= count || Instant::now() >= deadline {
                        break;
                    }
                    next.set(i + 1);
                    let room = target.room("churn", (i as usize) % rooms.max(1));
                    let ep = &eps[(i as usize) % eps.len()];
                    let t0 = Instant::now();
                    let cycle = async {
                        let mut c =
                            Conn::open(ep, &format!("lg-{}-c{i}", std::process::id())).await?;
                        c.join(&room).await?;
                        let connected = t0.elapsed();
                        c.leave(&room).await?;
                        c.close().await?;
                        Ok::<_, Error>(connected)
                    };
                    match cycle.await {
                        Ok(connected) => {
                            done.set(done.get() + 1);
                            let _ = connect_us
                                .borrow_mut()
                                .record((connected.as_micros() as u64).max(1));
                            let _ = cycle_us
                                .borrow_mut()
                                .record((t0.elapsed().as_micros() as u64).max(1));
                        }
                        Err(e) => sh.error(format!("cycle {i}: {e}")),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed();
    let cpu1 = broker.cpu();
    let end_busy = broker.mem();
    // Give the broker a moment to release the sessions, then look again (leaks).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = broker.mem();
    if let Some(s) = sampler {
        s.abort();
    }
    r.set("cycles", done.get());
    r.set("cycle_errors", sh.error_count.get());
    r.set("duration_s", secs(elapsed));
    r.set("cycles_per_s", done.get() as f64 / elapsed.as_secs_f64());
    let c = cycle_us.borrow();
    if !c.is_empty() {
        r.set("cycle_p50_ms", ms(c.value_at_quantile(0.5)));
        r.set("cycle_p99_ms", ms(c.value_at_quantile(0.99)));
        r.set("cycle_max_ms", ms(c.max()));
    }
    let c = connect_us.borrow();
    if !c.is_empty() {
        r.set("connect_p50_ms", ms(c.value_at_quantile(0.5)));
        r.set("connect_p99_ms", ms(c.value_at_quantile(0.99)));
    }
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        let cpu = c1.since(&c0);
        r.set("broker_cpu_s", cpu);
        r.set("broker_cpu_pct", 100.0 * cpu / elapsed.as_secs_f64());
        if done.get() > 0 {
            r.set("us_per_cycle", cpu * 1e6 / done.get() as f64);
        }
    }
    mem_report(r, base, end_busy, sh.peak_rss_kib.get());
    if let Some(m) = settled {
        r.set("broker_rss_settled_kib", m.rss_kib);
    }
    finish_common(r, &sh);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_exact_size_and_parses() {
        let mut p = Vec::new();
        make_payload(&mut p, 123_456_789, 42, 64);
        assert_eq!(p.len(), 64);
        assert!(serde_json::from_slice::<serde_json::Value>(&p).is_ok());
        assert_eq!(parse_stamp(&p), Some((123_456_789, 42)));
        let env = [
            b"{\"type\":\"room.message\",\"payload\":".as_slice(),
            &p,
            b"}",
        ]
        .concat();
        assert_eq!(parse_stamp(&env), Some((123_456_789, 42)));
        make_payload(&mut p, u64::MAX / 2, u64::MAX / 2, 16);
        assert_eq!(parse_stamp(&p), Some((u64::MAX / 2, u64::MAX / 2)));
    }

    #[test]
    fn expected_round_robin() {
        let e = Expected::new(vec![5, 4, 5]);
        assert_eq!(e.upto(0), 0);
        assert_eq!(e.upto(2), 9);
        assert_eq!(e.upto(3), 14);
        assert_eq!(e.upto(7), 33);
    }

    #[test]
    fn no_stamp() {
        assert_eq!(parse_stamp(b"{\"x\":1}"), None);
        assert_eq!(parse_stamp(b"{\"t\":1,\"q\":2}"), None);
    }
}
