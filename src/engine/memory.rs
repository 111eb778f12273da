//! In-process engine: a ring buffer per room, idle rooms parked in a map until their TTL.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use lru::LruCache;

use actix::Recipient;

use super::{
    Answer, Appended, ControlOrder, DedupKey, Engine, PresenceInfo, PresenceJoin, Replay, RoomFeed,
    RoomInfo, RoomLog,
};
use crate::config::RoomPolicy;

/// The embedded default engine. A Room actor holds its log while it runs, and stays up for
/// `history.ttl` after its last member leaves, so nothing needs parking (a retired room's
/// history has expired anyway). The engine itself keeps only what dropped connections
/// left for resume.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    detached: Mutex<HashMap<String, Detached>>,
}

#[derive(Debug)]
struct Detached {
    user: String,
    rooms: Vec<String>,
    until: Instant,
}

impl MemoryEngine {
    fn detached(&self) -> std::sync::MutexGuard<'_, HashMap<String, Detached>> {
        // A panic elsewhere cannot leave the map half-updated: every change is one call.
        self.detached.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for MemoryEngine {
    fn serve_orders(&self, _to: Recipient<ControlOrder>) {}

    fn session_here(&self, _connection_id: &str, _here: bool) {}

    fn send_order(&self, _order: ControlOrder) -> Answer<bool> {
        Answer::Now(false)
    }

    fn rooms(&self, here: Vec<RoomInfo>) -> Answer<Vec<RoomInfo>> {
        Answer::Now(here)
    }

    fn detach(&self, connection_id: &str, user: &str, rooms: Vec<String>, ttl: Duration) {
        let now = Instant::now();
        let mut detached = self.detached();
        detached.retain(|_, d| d.until > now);
        detached.insert(
            connection_id.to_owned(),
            Detached {
                user: user.to_owned(),
                rooms,
                until: now + ttl,
            },
        );
    }

    fn reattach(&self, connection_id: &str, user: &str) -> Answer<Option<Vec<String>>> {
        let mut detached = self.detached();
        let found = detached
            .get(connection_id)
            .is_some_and(|d| d.user == user && d.until > Instant::now());
        Answer::Now(
            found
                .then(|| detached.remove(connection_id))
                .flatten()
                .map(|d| d.rooms),
        )
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn status(&self) -> super::EngineStatus {
        let now = Instant::now();
        let mut detached = self.detached();
        detached.retain(|_, d| d.until > now);
        super::EngineStatus {
            detached: Some(detached.len() as u64),
            ..Default::default()
        }
    }

    fn open(&self, _room: &str, policy: &RoomPolicy) -> Box<dyn RoomLog> {
        Box::new(MemoryLog::new(policy))
    }

    fn park(&self, _room: &str, _log: Box<dyn RoomLog>, _keep_for: Duration) {}
}

/// Sequence counter, a time-limited ring of encoded frames bounded in count and bytes, and
/// an LRU of publisher-scoped client message ids bounded in count and bytes.
pub struct MemoryLog {
    last_seq: u64,
    capacity: usize,
    max_bytes: usize,
    ttl: Duration,
    ring: VecDeque<(u64, Instant, ByteString)>,
    ring_bytes: usize,
    /// Unbounded as a cache, bounded by `seen_capacity` here: a cache made with its capacity
    /// allocates the whole table up front (35 KiB for 1000 ids), in every room, even one
    /// that never sees a client id.
    seen: LruCache<String, u64>,
    seen_capacity: usize,
    seen_max_bytes: usize,
    seen_bytes: usize,
    /// Present users: their connection count and first arrival.
    present: HashMap<String, (u32, String)>,
}

impl MemoryLog {
    /// An empty log sized by `policy`.
    pub fn new(policy: &RoomPolicy) -> Self {
        MemoryLog {
            last_seq: 0,
            capacity: policy.history_size,
            max_bytes: policy.history_max_bytes,
            ttl: policy.history_ttl,
            ring: VecDeque::new(),
            ring_bytes: 0,
            seen: LruCache::unbounded(),
            seen_capacity: policy.dedup_size.max(1),
            seen_max_bytes: policy.dedup_max_bytes,
            seen_bytes: 0,
            present: HashMap::new(),
        }
    }

    fn expire(&mut self) {
        while let Some((_, at, _)) = self.ring.front() {
            if at.elapsed() < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, _, frame)) = self.ring.pop_front() {
            self.ring_bytes -= frame.len();
        }
    }

    /// Remembers `key`, forgetting the least recently used ids beyond the budgets.
    fn remember(&mut self, key: String, seq: u64) {
        self.seen_bytes += key.len();
        if let Some((old, _)) = self.seen.push(key, seq) {
            self.seen_bytes -= old.len();
        }
        while self.seen.len() > self.seen_capacity
            || (self.seen_bytes > self.seen_max_bytes && self.seen.len() > 1)
        {
            if let Some((old, _)) = self.seen.pop_lru() {
                self.seen_bytes -= old.len();
            }
        }
    }

    /// Bytes held in history and in remembered ids (for tests and accounting).
    pub fn held_bytes(&self) -> (usize, usize) {
        (self.ring_bytes, self.seen_bytes)
    }
}

impl MemoryLog {
    /// [`RoomLog::append`], answered at once.
    pub fn append_now(
        &mut self,
        dedup: Option<DedupKey<'_>>,
        encode: &mut dyn FnMut(u64) -> ByteString,
    ) -> Appended {
        let key = dedup.as_ref().map(DedupKey::encode);
        if let Some(key) = &key {
            if let Some(seq) = self.seen.get(key) {
                return Appended::Duplicate { seq: *seq };
            }
        }
        self.last_seq += 1;
        if let Some(key) = key {
            self.remember(key, self.last_seq);
        }
        let frame = encode(self.last_seq);
        if self.ring.len() == self.capacity {
            self.pop_oldest();
        }
        self.ring_bytes += frame.len();
        self.ring
            .push_back((self.last_seq, Instant::now(), frame.clone()));
        // The newest message stays even when it alone is over the budget: it is bounded by
        // the frame size limit, and a room always replays at least its last message.
        while self.ring_bytes > self.max_bytes && self.ring.len() > 1 {
            self.pop_oldest();
        }
        Appended::New {
            seq: self.last_seq,
            frame,
        }
    }

    /// [`RoomLog::since`], answered at once.
    pub fn since_now(&mut self, after_seq: u64) -> Replay {
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
                .map(|(seq, _, f)| (*seq, f.clone()))
                .collect(),
            last_seq: self.last_seq,
        }
    }
}

impl RoomLog for MemoryLog {
    fn is_shared(&self) -> bool {
        false
    }

    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn append(
        &mut self,
        dedup: Option<DedupKey<'_>>,
        encode: &mut dyn FnMut(u64) -> ByteString,
    ) -> Answer<Appended> {
        Answer::Now(self.append_now(dedup, encode))
    }

    fn since(&mut self, after_seq: u64) -> Answer<Replay> {
        Answer::Now(self.since_now(after_seq))
    }

    fn feed(&mut self, _to: Recipient<RoomFeed>) -> Option<Answer<u64>> {
        None
    }

    fn unfeed(&mut self) {}

    fn presence_add(
        &mut self,
        user: &str,
        _connection: &str,
        _arrival: ByteString,
    ) -> Answer<PresenceJoin> {
        let entry = self
            .present
            .entry(user.to_owned())
            .or_insert_with(|| (0, crate::protocol::frame::now_rfc3339()));
        entry.0 += 1;
        let first = entry.0 == 1;
        Answer::Now(PresenceJoin {
            first,
            present: self.present_list(),
        })
    }

    fn presence_remove(
        &mut self,
        user: &str,
        _connection: &str,
        _departure: ByteString,
    ) -> Answer<Option<String>> {
        let last = match self.present.get_mut(user) {
            Some(entry) => {
                entry.0 = entry.0.saturating_sub(1);
                entry.0 == 0
            }
            None => false,
        };
        if last {
            self.present.remove(user);
        }
        Answer::Now(last.then(|| user.to_owned()))
    }

    fn presence(&mut self) -> Answer<Vec<PresenceInfo>> {
        Answer::Now(self.present_list())
    }

    fn presence_ttl(&self) -> Option<Duration> {
        None
    }

    fn presence_refresh(&mut self, _connections: Vec<String>) -> Answer<Vec<String>> {
        Answer::Now(Vec::new())
    }

    fn announce(&mut self, _frame: ByteString) {}

    fn members(&mut self, _count: usize) {}
}

impl MemoryLog {
    fn present_list(&self) -> Vec<PresenceInfo> {
        let mut list: Vec<PresenceInfo> = self
            .present
            .iter()
            .map(|(user, (connections, joined_at))| PresenceInfo {
                user: user.clone(),
                connections: *connections,
                joined_at: joined_at.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.user.cmp(&b.user));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(history_size: usize) -> RoomPolicy {
        RoomPolicy {
            history_size,
            history_max_bytes: 1 << 20,
            history_ttl: Duration::from_secs(60),
            dedup_size: 2,
            dedup_max_bytes: 1 << 20,
            presence: false,
            client_publish: true,
            anonymous: true,
        }
    }

    fn append(log: &mut MemoryLog) -> u64 {
        match log.append_now(None, &mut |seq| ByteString::from(seq.to_string())) {
            Appended::New { seq, .. } => seq,
            other => unreachable!("no client id, a local log: {other:?}"),
        }
    }

    fn by(publisher: &'static str, id: &'static str) -> Option<DedupKey<'static>> {
        Some(DedupKey {
            server: false,
            publisher,
            id,
        })
    }

    #[test]
    fn client_ids_are_remembered_in_an_lru() {
        let mut log = MemoryLog::new(&policy(10));
        let mut encode = |seq: u64| ByteString::from(seq.to_string());
        assert!(matches!(
            log.append_now(by("u", "a"), &mut encode),
            Appended::New { seq: 1, .. }
        ));
        assert_eq!(
            log.append_now(by("u", "a"), &mut encode),
            Appended::Duplicate { seq: 1 }
        );
        assert!(matches!(
            log.append_now(by("u", "b"), &mut encode),
            Appended::New { seq: 2, .. }
        ));
        assert!(matches!(
            log.append_now(by("u", "c"), &mut encode),
            Appended::New { seq: 3, .. }
        ));
        // "a" fell out of the 2-entry LRU: it is new again.
        assert!(matches!(
            log.append_now(by("u", "a"), &mut encode),
            Appended::New { seq: 4, .. }
        ));
    }

    #[test]
    fn ids_are_scoped_to_their_publisher() {
        let mut log = MemoryLog::new(&policy(10));
        let mut encode = |seq: u64| ByteString::from(seq.to_string());
        assert!(matches!(
            log.append_now(by("mallory", "x"), &mut encode),
            Appended::New { seq: 1, .. }
        ));
        assert!(matches!(
            log.append_now(by("alice", "x"), &mut encode),
            Appended::New { seq: 2, .. }
        ));
        assert_eq!(
            log.append_now(by("alice", "x"), &mut encode),
            Appended::Duplicate { seq: 2 }
        );
        // No split of publisher and id spells another pair's key.
        assert!(matches!(
            log.append_now(by("alic", "ex"), &mut encode),
            Appended::New { seq: 3, .. }
        ));
        // An API caller and a user of the same name are different publishers.
        let api = DedupKey {
            server: true,
            publisher: "alice",
            id: "x",
        };
        assert!(matches!(
            log.append_now(Some(api), &mut encode),
            Appended::New { seq: 4, .. }
        ));
    }

    #[test]
    fn history_and_ids_are_bounded_in_bytes() {
        let mut policy = policy(100);
        policy.dedup_size = 1000;
        policy.history_max_bytes = 1000;
        policy.dedup_max_bytes = 500;
        let mut log = MemoryLog::new(&policy);
        let ids: Vec<String> = (0..50).map(|i| format!("{i:0>40}")).collect();
        for id in &ids {
            let key = DedupKey {
                server: false,
                publisher: "u",
                id,
            };
            log.append_now(Some(key), &mut |_| ByteString::from("x".repeat(100)));
        }
        let (history, seen) = log.held_bytes();
        assert!(history <= 1000, "{history}");
        assert!(seen <= 500, "{seen}");
        let replay = log.since_now(0);
        assert_eq!(replay.frames.len(), 10);
        assert!(!replay.recovered);
        // The newest ids are the ones remembered.
        let newest = DedupKey {
            server: false,
            publisher: "u",
            id: &ids[49],
        };
        assert_eq!(
            log.append_now(Some(newest), &mut |_| ByteString::from("x")),
            Appended::Duplicate { seq: 50 }
        );
        // One message over the whole budget still stays, alone.
        log.append_now(None, &mut |_| ByteString::from("y".repeat(5000)));
        assert_eq!(log.since_now(0).frames.len(), 1);
    }

    #[test]
    fn seq_is_gapless_and_history_bounded() {
        let mut log = MemoryLog::new(&policy(3));
        for expected in 1..=5 {
            assert_eq!(append(&mut log), expected);
        }
        let r = log.since_now(3);
        assert!(r.recovered);
        assert_eq!(
            r.frames,
            vec![(4, ByteString::from("4")), (5, ByteString::from("5"))]
        );
        let r = log.since_now(1);
        assert!(!r.recovered, "seq 2 has left history");
        assert_eq!(r.frames.len(), 3);
        assert!(log.since_now(5).frames.is_empty());
        assert!(log.since_now(5).recovered);
        let r = log.since_now(9);
        assert!(!r.recovered, "a client ahead of the log lost its gap");
        assert!(r.frames.is_empty());
    }
}
