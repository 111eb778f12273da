//! The bounded outbound queue of one WebSocket and the task that drains it.
//!
//! Rooms and the session push frames with [`Outbound::send`], which never waits: when the
//! queue is full (in frames or bytes) the queue aborts the connection with 4009 and reports
//! the overflow, so one slow reader can never hold up a room or grow memory without bound.
//!
//! The queue is a `VecDeque` under a mutex rather than a channel: a bounded tokio channel
//! allocates its first 32-slot block (1.3 KiB) when it is made, on every connection, idle or
//! not, where an empty `VecDeque` holds nothing. The writer gives the deque's buffer back
//! whenever it finds the queue empty, so a connection holds queue memory only while frames
//! wait for its socket. One `Notify` wakes the writer for everything it waits on: a frame
//! in an empty queue, an abort, the last sender gone.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_http::ws::Message;
use actix_ws::CloseReason;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::future::Either;
use futures_util::FutureExt;
use prometheus::IntCounterVec;
use tokio::sync::Notify;

use crate::protocol::close;
use crate::transport::owned::SocketWriter;
use crate::transport::socket::SocketHandle;

/// The longest header of a frame the server sends (2 bytes and an 8-byte length; unmasked).
const MAX_HEADER: usize = 10;

/// How many queued frames the writer takes at once.
const WRITE_BATCH: usize = 64;

/// The largest frame the batched framing makes by joining messages (a longer message still
/// goes alone, in a frame of its own).
const JOINED_FRAME_MAX: usize = 64 * 1024;

/// How many of the texts at the front of `queue` (at most `max`) go into one joined frame,
/// and the frame's payload length with the newlines between them.
fn joinable(queue: &VecDeque<Outgoing>, max: usize) -> (usize, usize) {
    let mut count = 0;
    let mut len = 0;
    for item in queue.iter().take(max) {
        let (Outgoing::Text(text) | Outgoing::Replay(text)) = item else {
            break;
        };
        let with = len + usize::from(count > 0) + text.len();
        if count > 0 && with > JOINED_FRAME_MAX {
            break;
        }
        count += 1;
        len = with;
    }
    (count, len)
}

/// The text of a queued message frame.
fn text_of(item: &Outgoing) -> &str {
    match item {
        Outgoing::Text(text) | Outgoing::Replay(text) => text,
        _ => "",
    }
}

/// The write deadline of one connection: how long a write may wait on a peer that does not
/// read, and how long a close may take, before the TCP connection is reset.
#[derive(Debug, Clone, Default)]
pub struct WriteDeadline {
    /// The connection's socket.
    pub socket: SocketHandle,
    /// `limits.write_timeout`.
    pub timeout: Duration,
    /// `switchboard_connection_resets_total`.
    pub resets: Option<IntCounterVec>,
}

impl WriteDeadline {
    /// Arms the bound on a close: reset the connection if it still exists after `timeout`.
    fn closing(&self) {
        let resets = self.resets.clone();
        self.socket.reset_after(self.timeout, move || {
            if let Some(resets) = resets {
                resets.with_label_values(&["close_unfinished"]).inc();
            }
        });
    }

    /// Resets the connection now: a write waited `timeout`.
    fn stalled(&self) -> WriterExit {
        if self.socket.reset() {
            if let Some(resets) = &self.resets {
                resets.with_label_values(&["write_stalled"]).inc();
            }
        }
        WriterExit::Stalled
    }
}

/// One item for the socket.
#[derive(Debug)]
pub enum Outgoing {
    /// A text frame.
    Text(ByteString),
    /// A text frame replayed from a room's history (not counted against the queue's limits).
    Replay(ByteString),
    /// A pong answering a ping.
    Pong(Bytes),
    /// A ping (the heartbeat of clients that speak no protocol of the broker's).
    Ping,
    /// The closing handshake; the writer stops after it.
    Close(CloseReason),
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The queue was full: the connection is being closed with 4009.
    #[error("outbound queue full")]
    Overflow,
    /// The connection is closing or closed.
    #[error("connection closed")]
    Closed,
}

/// What the mutex guards.
#[derive(Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    /// Set by an abort: the writer closes with it, dropping what is queued.
    abort: Option<CloseReason>,
    /// What counts against the limits: frames queued or in the writer's hands, not yet
    /// encoded for the socket.
    held: Held,
}

/// Frames and bytes held against the queue's limits. Kept under the queue's lock, which a
/// push takes anyway: as atomics beside it they cost a fan-out four more atomic operations
/// per delivery, and the writer gives them back once per batch instead of once per frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Held {
    /// Live frames (not replays), and their bytes.
    frames: usize,
    bytes: usize,
    /// Replayed bytes.
    replay_bytes: usize,
}

impl Held {
    /// What `item` alone holds.
    fn of(item: &Outgoing) -> Held {
        let mut held = Held::default();
        held.count(item);
        held
    }

    /// Adds what `item` holds.
    fn count(&mut self, item: &Outgoing) {
        match item {
            Outgoing::Text(text) => {
                self.frames += 1;
                self.bytes += text.len();
            }
            Outgoing::Replay(text) => self.replay_bytes += text.len(),
            Outgoing::Pong(_) | Outgoing::Ping | Outgoing::Close(_) => {}
        }
    }

    fn give_back(&mut self, released: Held) {
        self.frames = self.frames.saturating_sub(released.frames);
        self.bytes = self.bytes.saturating_sub(released.bytes);
        self.replay_bytes = self.replay_bytes.saturating_sub(released.replay_bytes);
    }
}

struct Shared {
    /// The connection id, for log lines.
    conn: Arc<str>,
    overflows: Option<prometheus::IntCounter>,
    /// Limits on live frames (not replays) and their bytes (see [`Held`]).
    max_frames: usize,
    max_bytes: usize,
    /// The limit on replayed bytes.
    max_replay_bytes: usize,
    /// Items of any kind the queue holds at most (live, replayed and control frames).
    capacity: usize,
    queue: Mutex<Queue>,
    /// Wakes the writer (the only waiter).
    wake: Notify,
    /// Live `Outbound` handles: at zero the writer closes normally once the queue is empty.
    senders: AtomicUsize,
    /// A close was requested: no further frames are accepted.
    closed: AtomicBool,
    /// The writer is gone: nothing more is accepted (set before the queue is emptied, and
    /// read under the lock by a push, so nothing is queued after that).
    receiver_gone: AtomicBool,
}

impl Shared {
    /// The queue, also after a panic elsewhere while it was held (its state stays
    /// consistent: every update is a push, a pop or a counter change).
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item`, unless the writer is gone, the queue holds `capacity` items, or a
    /// message frame would pass its limits; wakes the writer when the queue was empty (a
    /// writer that found it non-empty looks again before it waits).
    fn push(&self, item: Outgoing) -> Result<(), SendError> {
        let was_empty = {
            let mut queue = self.lock();
            if self.receiver_gone.load(Ordering::Acquire) {
                return Err(SendError::Closed);
            }
            if queue.items.len() >= self.capacity || !self.fits(&queue.held, &item) {
                return Err(SendError::Overflow);
            }
            queue.held.count(&item);
            queue.items.push_back(item);
            queue.items.len() == 1
        };
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Whether `item` may join what `held` counts.
    fn fits(&self, held: &Held, item: &Outgoing) -> bool {
        match item {
            Outgoing::Text(text) => {
                held.frames < self.max_frames && held.bytes + text.len() <= self.max_bytes
            }
            Outgoing::Replay(text) => held.replay_bytes + text.len() <= self.max_replay_bytes,
            Outgoing::Pong(_) | Outgoing::Ping | Outgoing::Close(_) => true,
        }
    }

    fn set_abort(&self, reason: CloseReason) {
        self.lock().abort.get_or_insert(reason);
        self.wake.notify_one();
    }
}

/// What the writer found in the queue.
enum Taken {
    /// Frames moved into the batch.
    Frames,
    /// Abort with this close, dropping what is queued.
    Abort(CloseReason),
    /// Every sender is gone and the queue is empty: a normal close.
    Ended,
    /// Nothing yet: wait for the next wake.
    Empty,
}

/// Sending half: cheap to clone, shared by the session and the rooms it is in.
pub struct Outbound {
    shared: Arc<Shared>,
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Outbound {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.wake.notify_one();
        }
    }
}

/// Receiving half, owned by the writer task.
pub struct OutboundReceiver {
    shared: Arc<Shared>,
    /// Join queued messages into one frame (the `switchboard.v1.batch` subprotocol).
    joined: bool,
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        self.shared.lock().items = VecDeque::new();
    }
}

impl Outbound {
    /// A queue for connection `conn` whose live frames are bounded by `max_frames` and
    /// `max_bytes`, with room for `replay.0` more frames and `replay.1` more bytes replayed
    /// from history; `overflows` counts 4009 closes.
    ///
    /// Replays have limits of their own. A resume after a long gap may replay more than the
    /// queue holds in one go (a room's whole history), and counting it against the live
    /// limits would close the connection with 4009 before it read anything, on every
    /// reconnect, until the history expired: the client could never catch up. The session
    /// sizes the replay room from `[history]` (the limits reserve nothing up front).
    pub fn bounded(
        conn: Arc<str>,
        max_frames: usize,
        max_bytes: usize,
        replay: (usize, usize),
        overflows: Option<prometheus::IntCounter>,
    ) -> (Outbound, OutboundReceiver) {
        let (replay_frames, max_replay_bytes) = replay;
        let shared = Arc::new(Shared {
            conn,
            overflows,
            max_frames: max_frames.max(1),
            max_bytes,
            max_replay_bytes,
            capacity: max_frames.max(1).saturating_add(replay_frames),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            senders: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            receiver_gone: AtomicBool::new(false),
        });
        (
            Outbound {
                shared: shared.clone(),
            },
            OutboundReceiver {
                shared,
                joined: false,
            },
        )
    }

    /// Queues a text frame without waiting; on overflow, aborts the connection with 4009.
    pub fn send(&self, frame: ByteString) -> Result<(), SendError> {
        self.send_counted(Outgoing::Text(frame))
    }

    /// Queues a frame replayed from a room's history without waiting: held to the replay
    /// limits, not the live ones (see [`Outbound::bounded`]).
    pub fn send_replay(&self, frame: ByteString) -> Result<(), SendError> {
        self.send_counted(Outgoing::Replay(frame))
    }

    fn send_counted(&self, item: Outgoing) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        let queued = self.shared.push(item);
        if queued == Err(SendError::Overflow) {
            self.overflow();
        }
        queued
    }

    /// Queues a pong; dropped silently when the queue is full (the peer will time out).
    pub fn pong(&self, bytes: Bytes) {
        let _ = self.shared.push(Outgoing::Pong(bytes));
    }

    /// Queues a ping; dropped silently when the queue is full (the queue is busy, and the
    /// heartbeat's timeout still applies).
    pub fn ping(&self) {
        let _ = self.shared.push(Outgoing::Ping);
    }

    /// Closes after the frames already queued; aborts when the queue has no room.
    pub fn close(&self, code: u16, reason: &str) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let reason = close_reason(code, reason);
        if self.shared.push(Outgoing::Close(reason.clone())) == Err(SendError::Overflow) {
            self.shared.set_abort(reason);
        }
    }

    /// Closes now, dropping whatever is queued.
    pub fn abort(&self, code: u16, reason: &str) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.set_abort(close_reason(code, reason));
    }

    /// Whether a close was requested (no further frames are accepted).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
            || self.shared.receiver_gone.load(Ordering::Acquire)
    }

    fn overflow(&self) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            log::warn!(
                "conn={} slow consumer: outbound queue full, closing with 4009",
                self.shared.conn
            );
            if let Some(counter) = &self.shared.overflows {
                counter.inc();
            }
            self.shared
                .set_abort(close_reason(close::SLOW_CONSUMER, "slow consumer"));
        }
    }
}

/// A close frame's reason is at most 123 bytes (RFC 6455 §5.5: control frames carry 125,
/// two of them the code); a longer one is cut at a character boundary.
fn close_reason(code: u16, reason: &str) -> CloseReason {
    let reason = super::owned::close_reason_prefix(reason);
    CloseReason {
        code: code.into(),
        description: (!reason.is_empty()).then(|| reason.to_owned()),
    }
}

/// How the writer ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WriterExit {
    /// A close frame was sent with this code.
    Closed(u16),
    /// The socket went away first.
    Disconnected,
    /// A write waited `limits.write_timeout` on a peer that does not read: the connection
    /// was reset.
    Stalled,
}

impl OutboundReceiver {
    /// The JSON text frames queued so far, and whether the queue was closed (by a close
    /// frame, or an overflow): what a member would have been sent. For actor tests, which
    /// need no socket.
    #[cfg(test)]
    pub(crate) fn drain(&mut self) -> (Vec<serde_json::Value>, bool) {
        let mut frames = Vec::new();
        let mut queue = self.shared.lock();
        let mut closed = queue.abort.is_some();
        for item in queue.items.drain(..) {
            match item {
                Outgoing::Text(text) | Outgoing::Replay(text) => {
                    frames.push(serde_json::from_str(&text).expect("frames are JSON"))
                }
                Outgoing::Close(_) => closed = true,
                Outgoing::Pong(_) | Outgoing::Ping => {}
            }
        }
        (frames, closed)
    }

    /// Sends the messages queued together as one frame, newline-separated (the
    /// `switchboard.v1.batch` subprotocol), up to 64 KiB a frame. A message alone in the
    /// queue goes at once, as with one frame per message: joining never waits for company.
    pub fn join_frames(mut self, joined: bool) -> Self {
        self.joined = joined;
        self
    }

    /// Moves what is queued into `batch` (which is empty), or says why there is nothing.
    /// The two deques trade places, so a busy connection reuses their buffers; a connection
    /// found idle gives both back before it waits.
    fn take(&self, batch: &mut VecDeque<Outgoing>) -> Taken {
        let mut queue = self.shared.lock();
        if let Some(reason) = queue.abort.take() {
            return Taken::Abort(reason);
        }
        if !queue.items.is_empty() {
            std::mem::swap(&mut queue.items, batch);
            return Taken::Frames;
        }
        queue.items = VecDeque::new();
        drop(queue);
        *batch = VecDeque::new();
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            Taken::Ended
        } else {
            Taken::Empty
        }
    }

    /// An abort requested since the last look, if any.
    fn aborted_now(&self) -> Option<CloseReason> {
        self.shared.lock().abort.take()
    }

    /// Waits for an abort. It also wakes on other news (a frame, the last sender gone), so
    /// whoever selects on it looks at the queue again afterwards.
    async fn aborted(&self) -> CloseReason {
        loop {
            if let Some(reason) = self.aborted_now() {
                return reason;
            }
            self.shared.wake.notified().await;
        }
    }

    /// Drains the queue into the socket until a close, an abort, or a disconnect.
    ///
    /// Not an `async fn`: that would keep its arguments beside the future it awaits, in
    /// the task of every connection.
    pub fn run(
        self,
        writer: super::WsWriter,
        deadline: WriteDeadline,
    ) -> impl Future<Output = WriterExit> {
        match writer {
            super::WsWriter::Owned(writer) => Either::Left(self.run_owned(writer, deadline)),
            // Boxed: its future is the larger, and it serves only embedders' servers; every
            // connection's writer task would otherwise be sized for it.
            super::WsWriter::Dispatcher(ws) => {
                Either::Right(Box::pin(self.run_dispatcher(ws, deadline)))
            }
        }
    }

    /// Gives what the writer encoded back to the queue's limits.
    fn give_back(&self, released: Held) {
        if released != Held::default() {
            self.shared.lock().held.give_back(released);
        }
    }

    /// [`OutboundReceiver::run`] on a socket the broker owns: what is queued is taken at
    /// once, and written [`WRITE_BATCH`] frames at a time, each batch encoded into one
    /// buffer and written with one deadline. Nothing is kept once the queue is empty (an
    /// idle connection holds no batch and no write buffer). An abort is honoured between
    /// writes, never inside one: a frame cut halfway would make the close frame after it
    /// unreadable.
    ///
    /// The closes are boxed: they run once, and inline they would size the task of every
    /// connection for their futures.
    async fn run_owned(self, mut writer: SocketWriter, deadline: WriteDeadline) -> WriterExit {
        let mut taken = VecDeque::new();
        loop {
            match self.take(&mut taken) {
                Taken::Frames => {}
                Taken::Empty => {
                    self.shared.wake.notified().await;
                    continue;
                }
                Taken::Ended => return Box::pin(close_owned(&mut writer, None, &deadline)).await,
                Taken::Abort(reason) => {
                    return Box::pin(close_owned(&mut writer, Some(reason), &deadline)).await
                }
            }
            while !taken.is_empty() {
                if let Some(reason) = self.aborted_now() {
                    return Box::pin(close_owned(&mut writer, Some(reason), &deadline)).await;
                }
                let n = taken.len().min(WRITE_BATCH);
                // Sized once for the whole batch (payloads plus the longest header each), so
                // a busy fan-out never regrows the buffer frame by frame.
                let bytes: usize = taken
                    .iter()
                    .take(n)
                    .map(|item| match item {
                        Outgoing::Text(text) | Outgoing::Replay(text) => text.len() + MAX_HEADER,
                        Outgoing::Pong(bytes) => bytes.len() + MAX_HEADER,
                        Outgoing::Ping | Outgoing::Close(_) => MAX_HEADER,
                    })
                    .sum();
                let mut buf = BytesMut::with_capacity(bytes);
                let mut released = Held::default();
                let mut close = None;
                let mut left = n;
                while left > 0 {
                    if self.joined {
                        let (count, len) = joinable(&taken, left);
                        if count > 1 {
                            writer.encode_joined(
                                taken
                                    .iter()
                                    .take(count)
                                    .map(|item| text_of(item).as_bytes()),
                                len,
                                &mut buf,
                            );
                            for item in taken.drain(..count) {
                                released.count(&item);
                            }
                            left -= count;
                            continue;
                        }
                    }
                    let Some(item) = taken.pop_front() else {
                        break;
                    };
                    left -= 1;
                    released.count(&item);
                    let msg = match item {
                        Outgoing::Text(text) | Outgoing::Replay(text) => Message::Text(text),
                        Outgoing::Pong(bytes) => Message::Pong(bytes),
                        Outgoing::Ping => Message::Ping(Bytes::new()),
                        Outgoing::Close(reason) => {
                            close = Some(reason);
                            break;
                        }
                    };
                    writer.encode(msg, &mut buf);
                }
                self.give_back(released);
                if !buf.is_empty() {
                    // Boxed for the same reason as the closes: a timer is large, and an idle
                    // connection would carry its room.
                    let write =
                        Box::pin(tokio::time::timeout(deadline.timeout, writer.write(&buf)));
                    match write.await {
                        Err(_) => return deadline.stalled(),
                        Ok(Err(_)) => return WriterExit::Disconnected,
                        Ok(Ok(())) => {}
                    }
                }
                if let Some(reason) = close {
                    return Box::pin(close_owned(&mut writer, Some(reason), &deadline)).await;
                }
            }
        }
    }

    /// The `count` texts at the front of `taken` (their joined length `len`) as one
    /// newline-separated text, given back to the queue's limits (the batched framing on
    /// the actix-ws path, which takes a frame's text whole).
    fn join(&self, taken: &mut VecDeque<Outgoing>, count: usize, len: usize) -> ByteString {
        let mut joined = String::with_capacity(len);
        let mut released = Held::default();
        for (i, item) in taken.drain(..count).enumerate() {
            released.count(&item);
            if i > 0 {
                joined.push('\n');
            }
            joined.push_str(text_of(&item));
        }
        self.give_back(released);
        ByteString::from(joined)
    }

    /// [`OutboundReceiver::run`] through actix-ws under a server without the takeover: each
    /// frame goes into actix-ws's channel with one non-blocking try; only when that channel
    /// is full does the writer wait, and then it also watches for an abort. (Waiting on the
    /// abort signal for every frame cost ~10 % of the CPU of a max-rate fan-out.)
    async fn run_dispatcher(
        self,
        mut ws: actix_ws::Session,
        deadline: WriteDeadline,
    ) -> WriterExit {
        let mut taken = VecDeque::new();
        loop {
            match self.take(&mut taken) {
                Taken::Frames => {}
                Taken::Empty => {
                    self.shared.wake.notified().await;
                    continue;
                }
                Taken::Ended => {
                    deadline.closing();
                    let _ = tokio::time::timeout(deadline.timeout, ws.close(None)).await;
                    return WriterExit::Closed(close::NORMAL);
                }
                Taken::Abort(reason) => return abort_close(ws, reason, &deadline).await,
            }
            while !taken.is_empty() {
                let (count, len) = if self.joined {
                    joinable(&taken, WRITE_BATCH)
                } else {
                    (0, 0)
                };
                if count > 1 {
                    let text = self.join(&mut taken, count, len);
                    match self.send_text(&mut ws, text, &deadline).await {
                        Ok(()) => continue,
                        Err(exit) => return exit,
                    }
                }
                let Some(item) = taken.pop_front() else {
                    break;
                };
                self.give_back(Held::of(&item));
                let text = match item {
                    Outgoing::Close(reason) => {
                        let code = u16::from(reason.code);
                        deadline.closing();
                        let _ =
                            tokio::time::timeout(deadline.timeout, ws.close(Some(reason))).await;
                        return WriterExit::Closed(code);
                    }
                    control @ (Outgoing::Pong(_) | Outgoing::Ping) => {
                        // Rare: no fast path needed.
                        let written = tokio::select! {
                            biased;
                            reason = self.aborted() => return abort_close(ws, reason, &deadline).await,
                            r = async {
                                match &control {
                                    Outgoing::Pong(bytes) => ws.pong(bytes).await,
                                    _ => ws.ping(b"").await,
                                }
                            } => r,
                            _ = tokio::time::sleep(deadline.timeout) => return deadline.stalled(),
                        };
                        if written.is_err() {
                            return WriterExit::Disconnected;
                        }
                        continue;
                    }
                    Outgoing::Text(text) | Outgoing::Replay(text) => text,
                };
                if let Err(exit) = self.send_text(&mut ws, text, &deadline).await {
                    return exit;
                }
            }
        }
    }

    /// One text frame into actix-ws's channel: one non-blocking try, then, when the channel
    /// is full (the peer reads slowly), a wait that an abort or the deadline ends.
    async fn send_text(
        &self,
        ws: &mut actix_ws::Session,
        text: ByteString,
        deadline: &WriteDeadline,
    ) -> Result<(), WriterExit> {
        let written = match ws.text(text.clone()).now_or_never() {
            Some(r) => r,
            None => tokio::select! {
                biased;
                reason = self.aborted() => return Err(abort_close(ws.clone(), reason, deadline).await),
                r = ws.text(text) => r,
                _ = tokio::time::sleep(deadline.timeout) => return Err(deadline.stalled()),
            },
        };
        written.map_err(|_| WriterExit::Disconnected)
    }
}

/// Sends the close frame (`None`: a normal close) within the deadline, the reset armed in
/// case the peer never answers it.
async fn close_owned(
    writer: &mut SocketWriter,
    reason: Option<CloseReason>,
    deadline: &WriteDeadline,
) -> WriterExit {
    let code = reason.as_ref().map_or(close::NORMAL, |r| u16::from(r.code));
    deadline.closing();
    match tokio::time::timeout(deadline.timeout, writer.send(Message::Close(reason))).await {
        Ok(Ok(())) => WriterExit::Closed(code),
        Ok(Err(_)) => WriterExit::Disconnected,
        Err(_) => deadline.stalled(),
    }
}

/// Closes after an abort (4009 and the like). Only the ≤ 32 frames already in actix-ws's
/// channel are held meanwhile, and a consumer that is slow rather than gone still learns why
/// it was cut off; one that does not read at all has its connection reset at the deadline.
async fn abort_close(
    ws: actix_ws::Session,
    reason: CloseReason,
    deadline: &WriteDeadline,
) -> WriterExit {
    let code = u16::from(reason.code);
    deadline.closing();
    match tokio::time::timeout(deadline.timeout, ws.close(Some(reason))).await {
        Ok(Ok(())) => WriterExit::Closed(code),
        _ => WriterExit::Disconnected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_by_frames_closes_with_4009() {
        let (out, rx) = Outbound::bounded("t".into(), 2, 1 << 20, (0, 0), None);
        out.send("a".into()).unwrap();
        out.send("b".into()).unwrap();
        assert_eq!(out.send("c".into()), Err(SendError::Overflow));
        assert_eq!(out.send("d".into()), Err(SendError::Closed));
        let reason = rx.shared.lock().abort.clone().unwrap();
        assert_eq!(u16::from(reason.code), close::SLOW_CONSUMER);
    }

    #[test]
    fn a_replay_larger_than_the_queue_is_queued_and_live_frames_keep_their_limit() {
        let (out, mut rx) = Outbound::bounded("t".into(), 2, 10, (1000, 1 << 20), None);
        for n in 0..1000 {
            out.send_replay(format!("{{\"n\":{n}}}").into())
                .expect("a replay is not held to the live limits");
        }
        out.send("{}".into()).expect("live frame 1");
        out.send("{}".into()).expect("live frame 2");
        assert_eq!(out.send("{}".into()), Err(SendError::Overflow));
        let (frames, closed) = rx.drain();
        assert_eq!(frames.len(), 1002);
        assert!(closed, "the third live frame overflowed: 4009");
        // Beyond the replay room, in frames or in bytes, a replay overflows too.
        let (out, _rx) = Outbound::bounded("t".into(), 2, 1 << 20, (3, 1 << 20), None);
        for _ in 0..5 {
            out.send_replay("{}".into()).expect("within the channel");
        }
        assert_eq!(out.send_replay("{}".into()), Err(SendError::Overflow));
        let (out, _rx) = Outbound::bounded("t".into(), 2, 1 << 20, (100, 10), None);
        out.send_replay("12345".into()).expect("5 bytes");
        out.send_replay("12345".into()).expect("10 bytes");
        assert_eq!(out.send_replay("1".into()), Err(SendError::Overflow));
    }

    #[test]
    fn overflow_by_bytes() {
        let (out, _rx) = Outbound::bounded("t".into(), 100, 10, (0, 0), None);
        out.send("12345".into()).unwrap();
        assert_eq!(out.send("123456".into()), Err(SendError::Overflow));
    }

    #[test]
    fn graceful_close_queues_behind_frames() {
        let (out, rx) = Outbound::bounded("t".into(), 4, 100, (0, 0), None);
        out.send("last words".into()).unwrap();
        out.close(close::SERVICE_RESTART, "bye");
        let mut queue = rx.shared.lock();
        assert!(matches!(queue.items.pop_front(), Some(Outgoing::Text(_))));
        assert!(
            matches!(queue.items.pop_front(), Some(Outgoing::Close(r)) if u16::from(r.code) == 1012)
        );
        assert!(queue.abort.is_none());
    }

    /// The frames a client reads from a writer that drains `queue` (texts, then a close)
    /// over a real loopback TCP connection, joining frames or not.
    async fn frames_written(texts: &[String], joined: bool) -> Vec<String> {
        use actix_codec::Decoder;
        use actix_http::ws::{Codec, Frame};
        use std::io::Read;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let server = actix_rt::net::TcpStream::from_std(server).unwrap();
        let (_reader, writer) =
            crate::transport::owned::Socket::new(server, BytesMut::new()).split(1 << 20, None);
        let (out, rx) = Outbound::bounded("t".into(), 1024, 1 << 24, (0, 0), None);
        for text in texts {
            out.send(text.clone().into()).unwrap();
        }
        out.close(close::NORMAL, "");
        let deadline = WriteDeadline {
            timeout: Duration::from_secs(5),
            ..WriteDeadline::default()
        };
        let exit = rx
            .join_frames(joined)
            .run(super::super::WsWriter::Owned(writer), deadline)
            .await;
        assert_eq!(exit, WriterExit::Closed(close::NORMAL));

        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut codec = Codec::new().client_mode().max_size(1 << 24);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        loop {
            match codec.decode(&mut buf).unwrap() {
                Some(Frame::Text(text)) => frames.push(String::from_utf8(text.to_vec()).unwrap()),
                Some(Frame::Close(_)) => return frames,
                Some(other) => panic!("unexpected frame {other:?}"),
                None => {
                    let mut chunk = [0u8; 64 * 1024];
                    let n = client.read(&mut chunk).expect("the writer's frames");
                    assert!(n > 0, "the connection ended before the close frame");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    #[actix_rt::test]
    async fn batched_framing_joins_what_is_queued_and_never_exceeds_64_kib_a_frame() {
        let texts: Vec<String> = (1..=3).map(|n| format!("{{\"n\":{n}}}")).collect();
        assert_eq!(
            frames_written(&texts, true).await,
            vec!["{\"n\":1}\n{\"n\":2}\n{\"n\":3}".to_string()]
        );
        assert_eq!(
            frames_written(&texts, false).await,
            texts,
            "one frame per message"
        );
        assert_eq!(
            frames_written(&texts[..1], true).await,
            texts[..1].to_vec(),
            "a lone message goes as it is"
        );
        // Two messages of 40 KiB do not fit one joined frame; the third joins the second.
        let big = |c: char| format!("\"{}\"", c.to_string().repeat(40 * 1024));
        let texts = vec![big('a'), big('b'), "{}".to_string()];
        let frames = frames_written(&texts, true).await;
        assert_eq!(
            frames,
            vec![texts[0].clone(), format!("{}\n{{}}", texts[1])]
        );
        // More than one write's worth (64 frames) is joined across the writes.
        let texts: Vec<String> = (0..200).map(|n| format!("{{\"n\":{n}}}")).collect();
        let frames = frames_written(&texts, true).await;
        let split: Vec<&str> = frames.iter().flat_map(|f| f.split('\n')).collect();
        assert_eq!(split, texts.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            frames.len() < 10,
            "{} frames for 200 queued messages",
            frames.len()
        );
    }
}
