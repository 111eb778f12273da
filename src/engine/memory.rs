//! In-process engine: a ring buffer per room, idle rooms parked in a map until their TTL.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use lru::LruCache;

use super::{Appended, Engine, Replay, RoomLog};
use crate::config::RoomPolicy;

/// The embedded default engine. It keeps no state of its own: a Room actor holds its log
/// while it runs, and stays up for `history.ttl` after its last member leaves, so nothing
/// needs parking; a retired room's history has expired anyway.
#[derive(Debug, Default)]
pub struct MemoryEngine;

impl Engine for MemoryEngine {
    fn open(&self, _room: &str, policy: &RoomPolicy) -> Box<dyn RoomLog> {
        Box::new(MemoryLog::new(policy))
    }

    fn park(&self, _room: &str, _log: Box<dyn RoomLog>, _keep_for: Duration) {}
}

/// Sequence counter, a bounded time-limited ring of encoded frames, and an LRU of client
/// message ids.
pub struct MemoryLog {
    last_seq: u64,
    capacity: usize,
    ttl: Duration,
    ring: VecDeque<(u64, Instant, ByteString)>,
    seen: LruCache<String, u64>,
}

impl MemoryLog {
    /// An empty log sized by `policy`.
    pub fn new(policy: &RoomPolicy) -> Self {
        MemoryLog {
            last_seq: 0,
            capacity: policy.history_size,
            ttl: policy.history_ttl,
            ring: VecDeque::with_capacity(policy.history_size.min(1024)),
            seen: LruCache::new(NonZeroUsize::new(policy.dedup_size).unwrap_or(NonZeroUsize::MIN)),
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

    fn append(
        &mut self,
        client_id: Option<&str>,
        encode: &mut dyn FnMut(u64) -> ByteString,
    ) -> Appended {
        if let Some(id) = client_id {
            if let Some(seq) = self.seen.get(id) {
                return Appended::Duplicate { seq: *seq };
            }
        }
        self.last_seq += 1;
        if let Some(id) = client_id {
            self.seen.put(id.to_owned(), self.last_seq);
        }
        let frame = encode(self.last_seq);
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring
            .push_back((self.last_seq, Instant::now(), frame.clone()));
        Appended::New {
            seq: self.last_seq,
            frame,
        }
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

    fn policy(history_size: usize) -> RoomPolicy {
        RoomPolicy {
            history_size,
            history_ttl: Duration::from_secs(60),
            dedup_size: 2,
            presence: false,
            client_publish: true,
            anonymous: true,
        }
    }

    fn append(log: &mut MemoryLog) -> u64 {
        match log.append(None, &mut |seq| ByteString::from(seq.to_string())) {
            Appended::New { seq, .. } => seq,
            Appended::Duplicate { .. } => unreachable!("no client id"),
        }
    }

    #[test]
    fn client_ids_are_remembered_in_an_lru() {
        let mut log = MemoryLog::new(&policy(10));
        let mut encode = |seq: u64| ByteString::from(seq.to_string());
        assert!(matches!(
            log.append(Some("a"), &mut encode),
            Appended::New { seq: 1, .. }
        ));
        assert_eq!(
            log.append(Some("a"), &mut encode),
            Appended::Duplicate { seq: 1 }
        );
        assert!(matches!(
            log.append(Some("b"), &mut encode),
            Appended::New { seq: 2, .. }
        ));
        assert!(matches!(
            log.append(Some("c"), &mut encode),
            Appended::New { seq: 3, .. }
        ));
        // "a" fell out of the 2-entry LRU: it is new again.
        assert!(matches!(
            log.append(Some("a"), &mut encode),
            Appended::New { seq: 4, .. }
        ));
    }

    #[test]
    fn seq_is_gapless_and_history_bounded() {
        let mut log = MemoryLog::new(&policy(3));
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
}
