//! In-process engine: a ring buffer per room, idle rooms parked in a map until their TTL.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::{Engine, Replay, RoomLog};

/// An idle room's log and when it was parked.
type Parked = (Instant, Box<dyn RoomLog>);

/// The embedded default engine.
pub struct MemoryEngine {
    history_size: usize,
    ttl: Duration,
    parked: Mutex<HashMap<String, Parked>>,
}

impl MemoryEngine {
    /// Keeps `history_size` messages per room for `ttl`.
    pub fn new(history_size: usize, ttl: Duration) -> Self {
        MemoryEngine {
            history_size,
            ttl,
            parked: Mutex::new(HashMap::new()),
        }
    }
}

impl Engine for MemoryEngine {
    fn open(&self, room: &str) -> Box<dyn RoomLog> {
        let Ok(mut parked) = self.parked.lock() else {
            return Box::new(MemoryLog::new(self.history_size, self.ttl));
        };
        let ttl = self.ttl;
        parked.retain(|_, (at, _)| at.elapsed() < ttl);
        match parked.remove(room) {
            Some((_, log)) => log,
            None => Box::new(MemoryLog::new(self.history_size, self.ttl)),
        }
    }

    fn park(&self, room: &str, log: Box<dyn RoomLog>) {
        if log.last_seq() == 0 {
            return;
        }
        if let Ok(mut parked) = self.parked.lock() {
            parked.insert(room.to_owned(), (Instant::now(), log));
        }
    }
}

/// Sequence counter plus a bounded, time-limited ring of encoded frames.
pub struct MemoryLog {
    last_seq: u64,
    capacity: usize,
    ttl: Duration,
    ring: VecDeque<(u64, Instant, ByteString)>,
}

impl MemoryLog {
    /// An empty log.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        MemoryLog {
            last_seq: 0,
            capacity,
            ttl,
            ring: VecDeque::with_capacity(capacity.min(1024)),
        }
    }

    fn expire(&mut self) {
        while let Some((_, at, _)) = self.ring.front() {
            if at.elapsed() < self.ttl {
                break;
            }
            self.ring.pop_front();
        }
    }
}

impl RoomLog for MemoryLog {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn append(&mut self, encode: &mut dyn FnMut(u64) -> ByteString) -> (u64, ByteString) {
        self.last_seq += 1;
        let frame = encode(self.last_seq);
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring
            .push_back((self.last_seq, Instant::now(), frame.clone()));
        (self.last_seq, frame)
    }

    fn since(&mut self, after_seq: u64) -> Replay {
        self.expire();
        // A client ahead of the log saw a sequence this log no longer has (the room was
        // reset after its TTL): nothing can be recovered.
        let ahead = after_seq > self.last_seq;
        let oldest_kept = self.ring.front().map_or(self.last_seq + 1, |(s, _, _)| *s);
        Replay {
            recovered: !ahead && after_seq + 1 >= oldest_kept,
            frames: self
                .ring
                .iter()
                .filter(|(seq, _, _)| *seq > after_seq)
                .map(|(_, _, f)| f.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(log: &mut MemoryLog) -> u64 {
        log.append(&mut |seq| ByteString::from(seq.to_string())).0
    }

    #[test]
    fn seq_is_gapless_and_history_bounded() {
        let mut log = MemoryLog::new(3, Duration::from_secs(60));
        for expected in 1..=5 {
            assert_eq!(append(&mut log), expected);
        }
        let r = log.since(3);
        assert!(r.recovered);
        assert_eq!(r.frames, vec![ByteString::from("4"), ByteString::from("5")]);
        let r = log.since(1);
        assert!(!r.recovered, "seq 2 has left history");
        assert_eq!(r.frames.len(), 3);
        assert!(log.since(5).frames.is_empty());
        assert!(log.since(5).recovered);
        let r = log.since(9);
        assert!(!r.recovered, "a client ahead of the log lost its gap");
        assert!(r.frames.is_empty());
    }

    #[test]
    fn parked_logs_keep_their_sequence() {
        let engine = MemoryEngine::new(10, Duration::from_secs(60));
        let mut log = engine.open("r");
        log.append(&mut |s| ByteString::from(s.to_string()));
        engine.park("r", log);
        assert_eq!(engine.open("r").last_seq(), 1);
        assert_eq!(engine.open("r").last_seq(), 0, "taken once");
    }
}
