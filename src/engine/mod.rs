//! The engine: where room sequence numbers and history live.
//!
//! The Room actor owns a [`RoomLog`] while it runs and hands it back to the [`Engine`] when
//! it goes idle, so an empty room keeps its sequence (and history) for `history.ttl`. The
//! memory engine is the embedded default; a Redis engine for scale-out implements the same
//! two traits instead of changing the Room.

pub mod memory;

use bytestring::ByteString;

pub use memory::MemoryEngine;

/// Frames after a given seq, for replay.
#[derive(Debug, Default)]
pub struct Replay {
    /// Encoded `room.message` frames, oldest first.
    pub frames: Vec<ByteString>,
    /// False when part of the requested range has already left history.
    pub recovered: bool,
}

/// One room's sequence and history.
pub trait RoomLog: Send {
    /// The seq of the newest message (0 when none was ever published).
    fn last_seq(&self) -> u64;

    /// Allocates the next seq, encodes the frame for it once, stores and returns both.
    fn append(&mut self, encode: &mut dyn FnMut(u64) -> ByteString) -> (u64, ByteString);

    /// Everything after `after_seq` still in history, oldest first.
    fn since(&mut self, after_seq: u64) -> Replay;
}

/// Hands out room logs and keeps idle ones for a while.
pub trait Engine: Send + Sync + 'static {
    /// The log of `room`: the parked one if it has not expired, else a fresh one.
    fn open(&self, room: &str) -> Box<dyn RoomLog>;

    /// Takes back the log of a room that went idle.
    fn park(&self, room: &str, log: Box<dyn RoomLog>);
}
