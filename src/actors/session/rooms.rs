//! The rooms a session is in, by name.
//!
//! A sorted vector rather than a `HashMap`: almost every session is in one to a few rooms,
//! and a `HashMap` allocates four buckets for its first entry (about 200 bytes), which is
//! a twentieth of what an idle connection costs. The vector holds exactly as many entries
//! as the session has rooms while it has few, and grows as usual past that; lookups are a
//! binary search, so a publisher in a thousand rooms still finds one in ten comparisons.

use actix::Addr;

use crate::actors::room::Room;

/// Up to this many rooms the vector grows one entry at a time.
const EXACT_UP_TO: usize = 4;

/// Room name → the room's address (`V`), for one session.
pub(super) struct SessionRooms<V = Addr<Room>> {
    sorted: Vec<(String, V)>,
}

impl<V> Default for SessionRooms<V> {
    fn default() -> Self {
        SessionRooms { sorted: Vec::new() }
    }
}

impl<V> SessionRooms<V> {
    fn find(&self, room: &str) -> Result<usize, usize> {
        self.sorted
            .binary_search_by(|(name, _)| name.as_str().cmp(room))
    }

    /// The room's address, if the session is in it.
    pub fn get(&self, room: &str) -> Option<&V> {
        self.find(room).ok().map(|i| &self.sorted[i].1)
    }

    /// Whether the session is in the room.
    pub fn contains_key(&self, room: &str) -> bool {
        self.find(room).is_ok()
    }

    /// Adds the room, or replaces its address; answers the address it replaced.
    pub fn insert(&mut self, room: String, addr: V) -> Option<V> {
        match self.find(&room) {
            Ok(i) => Some(std::mem::replace(&mut self.sorted[i].1, addr)),
            Err(i) => {
                if self.sorted.len() < EXACT_UP_TO {
                    self.sorted.reserve_exact(1);
                }
                self.sorted.insert(i, (room, addr));
                None
            }
        }
    }

    /// Takes the room out; answers its address if the session was in it.
    pub fn remove(&mut self, room: &str) -> Option<V> {
        self.find(room).ok().map(|i| self.sorted.remove(i).1)
    }

    /// The rooms' names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.sorted.iter().map(|(name, _)| name)
    }

    /// How many rooms.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }
}

impl<V> IntoIterator for SessionRooms<V> {
    type Item = (String, V);
    type IntoIter = std::vec::IntoIter<(String, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.sorted.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_replaces_and_removes_by_name() {
        let mut rooms = SessionRooms::default();
        for (i, name) in ["b", "a", "c"].into_iter().enumerate() {
            assert_eq!(rooms.insert(name.to_owned(), i), None);
        }
        assert_eq!(rooms.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(rooms.get("a"), Some(&1));
        assert!(rooms.contains_key("c") && !rooms.contains_key("d"));
        assert_eq!(rooms.insert("a".to_owned(), 9), Some(1));
        assert_eq!((rooms.get("a"), rooms.len()), (Some(&9), 3));
        assert_eq!(rooms.remove("b"), Some(0));
        assert_eq!(rooms.remove("b"), None);
        assert_eq!(
            rooms.into_iter().collect::<Vec<_>>(),
            [("a".to_owned(), 9), ("c".to_owned(), 2)]
        );
    }

    #[test]
    fn holds_exactly_its_few_rooms_and_still_finds_one_among_many() {
        let mut rooms = SessionRooms::default();
        for i in 0..EXACT_UP_TO {
            rooms.insert(format!("room:{i}"), i);
            assert_eq!(rooms.sorted.capacity(), i + 1);
        }
        for i in EXACT_UP_TO..1000 {
            rooms.insert(format!("room:{i}"), i);
        }
        assert_eq!(rooms.len(), 1000);
        assert!((0..1000).all(|i| rooms.get(&format!("room:{i}")) == Some(&i)));
    }
}
