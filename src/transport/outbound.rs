//! The bounded outbound queue of one WebSocket and the task that drains it.
//!
//! Rooms and the session push frames with [`Outbound::send`], which never waits: when the
//! queue is full (in frames or bytes) the queue aborts the connection with 4009 and reports
//! the overflow, so one slow reader can never hold up a room or grow memory without bound.
//! actix-ws's own channel holds 32 frames and its send waits when full; only the writer task
//! ever waits on it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_http::ws::Message;
use actix_ws::CloseReason;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::FutureExt;
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, Notify};

use crate::protocol::close;
use crate::transport::owned::SocketWriter;
use crate::transport::socket::SocketHandle;

/// The longest header of a frame the server sends (2 bytes and an 8-byte length; unmasked).
const MAX_HEADER: usize = 10;

/// How many queued frames the writer takes at once.
const WRITE_BATCH: usize = 64;

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

struct Shared {
    /// The connection id, for log lines.
    conn: Arc<str>,
    overflows: Option<prometheus::IntCounter>,
    /// Live frames (not replays) queued, and their bytes.
    queued_frames: AtomicUsize,
    queued_bytes: AtomicUsize,
    max_frames: usize,
    max_bytes: usize,
    /// Replayed bytes queued, and their own limit.
    replay_bytes: AtomicUsize,
    max_replay_bytes: usize,
    closed: AtomicBool,
    abort: Mutex<Option<CloseReason>>,
    abort_notify: Notify,
}

/// Sending half: cheap to clone, shared by the session and the rooms it is in.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
}

/// Receiving half, owned by the writer task.
pub struct OutboundReceiver {
    rx: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
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
    /// sizes the replay room from `[history]` (a channel's capacity reserves nothing up
    /// front).
    pub fn bounded(
        conn: Arc<str>,
        max_frames: usize,
        max_bytes: usize,
        replay: (usize, usize),
        overflows: Option<prometheus::IntCounter>,
    ) -> (Outbound, OutboundReceiver) {
        let (replay_frames, max_replay_bytes) = replay;
        let (tx, rx) = mpsc::channel(max_frames.max(1).saturating_add(replay_frames));
        let shared = Arc::new(Shared {
            conn,
            overflows,
            queued_frames: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            max_frames: max_frames.max(1),
            max_bytes,
            replay_bytes: AtomicUsize::new(0),
            max_replay_bytes,
            closed: AtomicBool::new(false),
            abort: Mutex::new(None),
            abort_notify: Notify::new(),
        });
        (
            Outbound {
                tx,
                shared: shared.clone(),
            },
            OutboundReceiver { rx, shared },
        )
    }

    /// Queues a text frame without waiting; on overflow, aborts the connection with 4009.
    pub fn send(&self, frame: ByteString) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        let len = frame.len();
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        let frames = self.shared.queued_frames.fetch_add(1, Ordering::AcqRel);
        let undo = || {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.shared.queued_frames.fetch_sub(1, Ordering::AcqRel);
        };
        if before + len > self.shared.max_bytes || frames >= self.shared.max_frames {
            undo();
            self.overflow();
            return Err(SendError::Overflow);
        }
        match self.tx.try_send(Outgoing::Text(frame)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                undo();
                self.overflow();
                Err(SendError::Overflow)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                undo();
                Err(SendError::Closed)
            }
        }
    }

    /// Queues a frame replayed from a room's history without waiting: held to the replay
    /// limits, not the live ones (see [`Outbound::bounded`]).
    pub fn send_replay(&self, frame: ByteString) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        let len = frame.len();
        let before = self.shared.replay_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.shared.max_replay_bytes {
            self.shared.replay_bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflow();
            return Err(SendError::Overflow);
        }
        match self.tx.try_send(Outgoing::Replay(frame)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.replay_bytes.fetch_sub(len, Ordering::AcqRel);
                self.overflow();
                Err(SendError::Overflow)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.replay_bytes.fetch_sub(len, Ordering::AcqRel);
                Err(SendError::Closed)
            }
        }
    }

    /// Queues a pong; dropped silently when the queue is full (the peer will time out).
    pub fn pong(&self, bytes: Bytes) {
        let _ = self.tx.try_send(Outgoing::Pong(bytes));
    }

    /// Queues a ping; dropped silently when the queue is full (the queue is busy, and the
    /// heartbeat's timeout still applies).
    pub fn ping(&self) {
        let _ = self.tx.try_send(Outgoing::Ping);
    }

    /// Closes after the frames already queued; aborts when the queue has no room.
    pub fn close(&self, code: u16, reason: &str) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let reason = close_reason(code, reason);
        if let Err(mpsc::error::TrySendError::Full(Outgoing::Close(reason))) =
            self.tx.try_send(Outgoing::Close(reason))
        {
            self.set_abort(reason);
        }
    }

    /// Closes now, dropping whatever is queued.
    pub fn abort(&self, code: u16, reason: &str) {
        self.shared.closed.store(true, Ordering::Release);
        self.set_abort(close_reason(code, reason));
    }

    /// Whether a close was requested (no further frames are accepted).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.tx.is_closed()
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
            self.set_abort(close_reason(close::SLOW_CONSUMER, "slow consumer"));
        }
    }

    fn set_abort(&self, reason: CloseReason) {
        if let Ok(mut slot) = self.shared.abort.lock() {
            slot.get_or_insert(reason);
        }
        self.shared.abort_notify.notify_one();
    }
}

/// A close frame's reason is at most 123 bytes (RFC 6455 §5.5: control frames carry 125,
/// two of them the code); a longer one is cut at a character boundary.
fn close_reason(code: u16, reason: &str) -> CloseReason {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseReason {
        code: code.into(),
        description: (end > 0).then(|| reason[..end].to_owned()),
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
        let mut closed = self.shared.abort.lock().is_ok_and(|a| a.is_some());
        while let Ok(item) = self.rx.try_recv() {
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

    async fn aborted(shared: &Shared) -> CloseReason {
        loop {
            if let Some(reason) = shared.abort.lock().ok().and_then(|mut s| s.take()) {
                return reason;
            }
            shared.abort_notify.notified().await;
        }
    }

    /// Drains the queue into the socket until a close, an abort, or a disconnect.
    ///
    /// Frames are taken in batches, and each goes into actix-ws's channel with one
    /// non-blocking try; only when that channel is full does the writer wait, and then it
    /// also watches for an abort. (Waiting on the abort signal for every frame cost ~10 % of
    /// the CPU of a max-rate fan-out.)
    pub async fn run(self, writer: super::WsWriter, deadline: WriteDeadline) -> WriterExit {
        match writer {
            super::WsWriter::Owned(writer) => self.run_owned(writer, deadline).await,
            super::WsWriter::Dispatcher(ws) => self.run_dispatcher(ws, deadline).await,
        }
    }

    /// Gives a taken frame's bytes back to the queue's limits.
    fn taken(&self, item: &Outgoing) {
        match item {
            Outgoing::Text(text) => {
                self.shared
                    .queued_bytes
                    .fetch_sub(text.len(), Ordering::AcqRel);
                self.shared.queued_frames.fetch_sub(1, Ordering::AcqRel);
            }
            Outgoing::Replay(text) => {
                self.shared
                    .replay_bytes
                    .fetch_sub(text.len(), Ordering::AcqRel);
            }
            Outgoing::Pong(_) | Outgoing::Ping | Outgoing::Close(_) => {}
        }
    }

    /// [`OutboundReceiver::run`] on a socket the broker owns: each batch taken from the
    /// queue is encoded into one buffer and written with one deadline. Nothing is kept
    /// between batches once the queue is empty (an idle connection holds no batch and no
    /// write buffer). An abort is honoured between writes, never inside one: a frame cut
    /// halfway would make the close frame after it unreadable.
    async fn run_owned(mut self, mut writer: SocketWriter, deadline: WriteDeadline) -> WriterExit {
        let shared = self.shared.clone();
        let mut batch = Vec::new();
        loop {
            let received = tokio::select! {
                biased;
                reason = Self::aborted(&shared) => {
                    return close_owned(&mut writer, Some(reason), &deadline).await;
                }
                n = self.rx.recv_many(&mut batch, WRITE_BATCH) => n,
            };
            if received == 0 {
                return close_owned(&mut writer, None, &deadline).await;
            }
            // Sized once for the whole batch (payloads plus the longest header each), so a
            // busy fan-out never regrows the buffer frame by frame.
            let bytes: usize = batch
                .iter()
                .map(|item| match item {
                    Outgoing::Text(text) | Outgoing::Replay(text) => text.len() + MAX_HEADER,
                    Outgoing::Pong(bytes) => bytes.len() + MAX_HEADER,
                    Outgoing::Ping | Outgoing::Close(_) => MAX_HEADER,
                })
                .sum();
            let mut buf = BytesMut::with_capacity(bytes);
            let mut close = None;
            for item in batch.drain(..) {
                self.taken(&item);
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
            if !buf.is_empty() {
                match tokio::time::timeout(deadline.timeout, writer.write(&buf)).await {
                    Err(_) => return deadline.stalled(),
                    Ok(Err(_)) => return WriterExit::Disconnected,
                    Ok(Ok(())) => {}
                }
            }
            if let Some(reason) = close {
                return close_owned(&mut writer, Some(reason), &deadline).await;
            }
            if self.rx.is_empty() {
                batch = Vec::new();
            }
        }
    }

    async fn run_dispatcher(
        mut self,
        mut ws: actix_ws::Session,
        deadline: WriteDeadline,
    ) -> WriterExit {
        let shared = self.shared.clone();
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        loop {
            let received = tokio::select! {
                biased;
                reason = Self::aborted(&shared) => return abort_close(ws, reason, &deadline).await,
                n = self.rx.recv_many(&mut batch, WRITE_BATCH) => n,
            };
            if received == 0 {
                deadline.closing();
                let _ = tokio::time::timeout(deadline.timeout, ws.close(None)).await;
                return WriterExit::Closed(close::NORMAL);
            }
            for item in batch.drain(..) {
                self.taken(&item);
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
                            reason = Self::aborted(&shared) => return abort_close(ws, reason, &deadline).await,
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
                let written = match ws.text(text.clone()).now_or_never() {
                    Some(r) => r,
                    // actix-ws's channel is full (the peer reads slowly): wait, unless aborted.
                    None => tokio::select! {
                        biased;
                        reason = Self::aborted(&shared) => return abort_close(ws, reason, &deadline).await,
                        r = ws.text(text) => r,
                        _ = tokio::time::sleep(deadline.timeout) => return deadline.stalled(),
                    },
                };
                if written.is_err() {
                    return WriterExit::Disconnected;
                }
            }
        }
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
        let reason = rx.shared.abort.lock().unwrap().clone().unwrap();
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
        let (out, mut rx) = Outbound::bounded("t".into(), 4, 100, (0, 0), None);
        out.send("last words".into()).unwrap();
        out.close(close::SERVICE_RESTART, "bye");
        assert!(matches!(rx.rx.try_recv(), Ok(Outgoing::Text(_))));
        assert!(matches!(rx.rx.try_recv(), Ok(Outgoing::Close(r)) if u16::from(r.code) == 1012));
        assert!(rx.shared.abort.lock().unwrap().is_none());
    }
}
