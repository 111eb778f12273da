//! The engine: where room sequence numbers and history live.
//!
//! The Room actor owns a [`RoomLog`] while it runs (an empty room stays up for
//! `history.ttl`, so its sequence and history survive) and hands it back to the [`Engine`]
//! when it retires. The memory engine is the embedded default and keeps nothing once a
//! room retires; a Redis engine for scale-out implements the same two traits, with state
//! that outlives the actor, instead of changing the Room.

pub mod memory;

use bytestring::ByteString;

use crate::config::RoomPolicy;

pub use memory::MemoryEngine;

/// Frames after a given seq, for replay.
#[derive(Debug, Default)]
pub struct Replay {
    /// Encoded `room.message` frames, oldest first.
    pub frames: Vec<ByteString>,
    /// False when part of the requested range has already left history.
    pub recovered: bool,
}

/// The outcome of [`RoomLog::append`].
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// A new message: its seq and its encoded frame.
    New {
        /// The seq allocated.
        seq: u64,
        /// The frame, encoded once.
        frame: ByteString,
    },
    /// The client id was seen before: the original seq; nothing to deliver.
    Duplicate {
        /// The seq the first publish got.
        seq: u64,
    },
}

/// What makes a publish a repeat: the same message id from the same publisher.
///
/// Scoping ids to their publisher means nobody can claim an id first and so swallow someone
/// else's message (id squatting): two users, or a user and the HTTP API, may pick the same
/// id and both are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupKey<'a> {
    /// Whether the publisher is the broker's API (`publisher` is then the caller, e.g.
    /// `key#0`) rather than a session (`publisher` is its user id): the two name spaces
    /// never meet, whatever a token's `sub` says.
    pub server: bool,
    /// Who publishes: the user id of a session, or the HTTP API caller.
    pub publisher: &'a str,
    /// The client's message id.
    pub id: &'a str,
}

/// One room's sequence, history and recently seen client message ids.
///
/// History and remembered ids are bounded by count and by bytes (`RoomPolicy`), oldest
/// first out, so no publisher can make a room hold more than its budget.
pub trait RoomLog: Send {
    /// The seq of the newest message (0 when none was ever published).
    fn last_seq(&self) -> u64;

    /// Allocates the next seq, encodes the frame for it once, stores and returns both;
    /// or, when `dedup` was already seen in this room, returns the original seq.
    fn append(
        &mut self,
        dedup: Option<DedupKey<'_>>,
        encode: &mut dyn FnMut(u64) -> ByteString,
    ) -> Appended;

    /// Everything after `after_seq` still in history, oldest first.
    fn since(&mut self, after_seq: u64) -> Replay;
}

/// Hands out room logs and keeps idle ones for a while.
pub trait Engine: Send + Sync + 'static {
    /// The log of `room`, sized by `policy` (a shared engine returns the stored state).
    fn open(&self, room: &str, policy: &RoomPolicy) -> Box<dyn RoomLog>;

    /// Takes back the log of a room that retired; an engine with shared state keeps it
    /// for `keep_for`.
    fn park(&self, room: &str, log: Box<dyn RoomLog>, keep_for: std::time::Duration);
}
