//! The connection's state and the stream of its changes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The first connection attempt is under way.
    Connecting,
    /// Connected and resumed: the broker's `system.connection.established` arrived.
    Connected {
        /// The broker's id of this connection (for `DELETE /api/sessions/{id}`, logs).
        connection_id: String,
    },
    /// The connection dropped (or an attempt failed); the next attempt starts after `delay`.
    Reconnecting {
        /// 1 for the first retry after a drop; reset by every successful connection.
        attempt: u32,
        /// How long the client waits before this attempt (zero after a 1012 restart).
        delay: Duration,
        /// The close code that ended the last connection, when there was one.
        code: Option<u16>,
        /// The close reason, or what went wrong.
        reason: String,
    },
    /// Closed for good; subscriptions have ended and pending operations failed.
    Closed {
        /// The close code that ended the client (`Some(1000)` after [`Client::close`](crate::Client::close)).
        code: Option<u16>,
        /// The close reason, or why the client gave up.
        reason: String,
    },
}

impl State {
    /// True for [`State::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, State::Closed { .. })
    }

    /// True for [`State::Connected`].
    pub fn is_connected(&self) -> bool {
        matches!(self, State::Connected { .. })
    }
}

/// Every state change of a client, in order, from the moment the stream was made; ends
/// after [`State::Closed`]. Made by [`Client::state_changes`](crate::Client::state_changes).
#[derive(Debug)]
pub struct StateStream {
    rx: mpsc::UnboundedReceiver<State>,
}

impl Stream for StateStream {
    type Item = State;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<State>> {
        self.rx.poll_recv(cx)
    }
}

/// Counters of what the client did, for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections established after the first.
    pub reconnects: u64,
    /// Room messages dropped because their seq had already been delivered (replays
    /// overlapping live traffic).
    pub duplicates_dropped: u64,
    /// Publishes sent again (same id) on a new connection because no ack had arrived.
    pub publishes_resent: u64,
    /// Acks with `duplicate: true`: retries the broker recognised and did not deliver again.
    pub duplicate_acks: u64,
}

/// What the client handle and its background task share.
#[derive(Debug)]
pub(crate) struct Shared {
    current: watch::Sender<State>,
    listeners: Mutex<Vec<mpsc::UnboundedSender<State>>>,
    pub(crate) reconnects: AtomicU64,
    pub(crate) duplicates_dropped: AtomicU64,
    pub(crate) publishes_resent: AtomicU64,
    pub(crate) duplicate_acks: AtomicU64,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            current: watch::Sender::new(State::Connecting),
            listeners: Mutex::new(Vec::new()),
            reconnects: AtomicU64::new(0),
            duplicates_dropped: AtomicU64::new(0),
            publishes_resent: AtomicU64::new(0),
            duplicate_acks: AtomicU64::new(0),
        }
    }

    pub(crate) fn set(&self, state: State) {
        if *self.current.borrow() == state {
            return;
        }
        log::debug!("switchboard client state: {state:?}");
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|l| l.send(state.clone()).is_ok());
        if state.is_closed() {
            listeners.clear();
        }
        self.current.send_replace(state);
    }

    pub(crate) fn get(&self) -> State {
        self.current.borrow().clone()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<State> {
        self.current.subscribe()
    }

    pub(crate) fn stream(&self) -> StateStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.borrow().clone();
        if current.is_closed() {
            let _ = tx.send(current);
        } else {
            listeners.push(tx);
        }
        StateStream { rx }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            reconnects: self.reconnects.load(Ordering::Relaxed),
            duplicates_dropped: self.duplicates_dropped.load(Ordering::Relaxed),
            publishes_resent: self.publishes_resent.load(Ordering::Relaxed),
            duplicate_acks: self.duplicate_acks.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}
