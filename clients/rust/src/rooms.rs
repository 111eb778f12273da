//! Per-room bookkeeping that makes delivery exactly-once and in order (the TypeScript
//! client's `RoomTracker`): the last seq seen per room, duplicates dropped, room resets
//! detected, `recovered: false` reported.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::mpsc;

use crate::{Envelope, Error, Gap, Member, Message, PresenceEvent, SubscriptionEvent};

type Sink = mpsc::UnboundedSender<SubscriptionEvent>;

#[derive(Debug, Default)]
struct RoomState {
    /// Last seq delivered (or the room's seq at a join without replay); `None`: never joined.
    last_seq: Option<u64>,
    subscription: Option<(u64, Sink)>,
    /// A join without `since_seq` is in flight: its `room.joined.seq` becomes `last_seq`.
    joining_live: bool,
    /// The room was reset: drop its frames until the replay-from-0 join's `room.joined`.
    awaiting_restart: bool,
    /// Unsubscribed: drop what is still in flight until `room.left`.
    leaving: bool,
}

/// What the caller should do about a room message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Delivered,
    Duplicate,
    Dropped,
    Untracked,
}

#[derive(Debug, Default)]
pub(crate) struct Rooms {
    rooms: HashMap<String, RoomState>,
}

impl Rooms {
    /// Tracks `room` for the subscription `id`; `since_seq` overrides the position.
    pub(crate) fn attach(&mut self, room: &str, id: u64, sink: Sink, since_seq: Option<u64>) {
        let state = self.rooms.entry(room.to_owned()).or_default();
        state.subscription = Some((id, sink));
        state.leaving = false;
        if since_seq.is_some() {
            state.last_seq = since_seq;
        }
    }

    /// Stops delivering `room` (when `id` is its subscription, or for any `None`); true
    /// when it was subscribed.
    pub(crate) fn detach(&mut self, room: &str, id: Option<u64>) -> bool {
        let Some(state) = self.rooms.get_mut(room) else {
            return false;
        };
        match (&state.subscription, id) {
            (Some((current, _)), Some(id)) if *current != id => false,
            (None, _) => false,
            _ => {
                state.subscription = None;
                state.leaving = true;
                true
            }
        }
    }

    /// The `since_seq` of the next join of `room` (`None`: no replay), noting a live join.
    pub(crate) fn since_for_join(&mut self, room: &str) -> Option<u64> {
        let state = self.rooms.get_mut(room)?;
        if state.last_seq.is_none() {
            state.joining_live = true;
        }
        state.last_seq
    }

    /// Rooms wanted back with their last seq, for `system.connection.resume`.
    pub(crate) fn resume_rooms(&self) -> BTreeMap<String, u64> {
        self.rooms
            .iter()
            .filter(|(_, s)| s.subscription.is_some())
            .filter_map(|(r, s)| Some((r.clone(), s.last_seq?)))
            .collect()
    }

    /// Subscribed rooms not in [`Rooms::resume_rooms`] (never joined).
    pub(crate) fn unjoined_rooms(&self) -> Vec<String> {
        self.rooms
            .iter()
            .filter(|(_, s)| s.subscription.is_some() && s.last_seq.is_none())
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Every subscribed room.
    pub(crate) fn subscribed_rooms(&self) -> Vec<String> {
        self.rooms
            .iter()
            .filter(|(_, s)| s.subscription.is_some())
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The connection dropped: rooms left (or being left) are forgotten, as the new
    /// connection does not join them.
    pub(crate) fn connection_lost(&mut self) {
        self.rooms.retain(|_, s| s.subscription.is_some());
    }

    /// The broker refused the room: its subscription gets the error and ends.
    pub(crate) fn refuse(&mut self, room: &str, error: Error) {
        if let Some(state) = self.rooms.remove(room) {
            if let Some((_, sink)) = state.subscription {
                let _ = sink.send(SubscriptionEvent::Refused(error));
            }
        }
    }

    /// Ends every subscription (the client closed for good).
    pub(crate) fn end_all(&mut self) {
        self.rooms.clear();
    }

    pub(crate) fn left(&mut self, room: &str) {
        if self.rooms.get(room).is_some_and(|s| s.leaving) {
            self.rooms.remove(room);
        }
    }

    /// A `room.joined`; returns a room to join again from seq 0 when it was reset.
    pub(crate) fn joined(&mut self, frame: &Envelope) -> Option<String> {
        let room = frame.room.as_deref()?;
        let seq = frame.seq.unwrap_or(0);
        let state = self.rooms.get_mut(room)?;
        if state.leaving {
            return None;
        }
        let recovered = frame
            .payload
            .as_ref()
            .and_then(|p| p.get("recovered"))
            .and_then(|r| r.as_bool())
            != Some(false);
        if state.awaiting_restart {
            state.awaiting_restart = false;
        } else if let Some(last) = state.last_seq.filter(|last| seq < *last) {
            // The room's latest seq is below one we saw: it restarted at 1 (a broker restart
            // on the memory engine, or idle past its TTL). Its new messages would look like
            // duplicates, so count again from 0 and ask for its whole new history.
            state.last_seq = Some(0);
            state.joining_live = false;
            state.awaiting_restart = true;
            send(
                state,
                SubscriptionEvent::Gap(Gap {
                    room: room.to_owned(),
                    since_seq: last,
                    seq,
                    reset: true,
                }),
            );
            return Some(room.to_owned());
        }
        if state.joining_live {
            state.joining_live = false;
            if state.last_seq.is_none_or(|last| seq > last) {
                state.last_seq = Some(seq);
            }
        }
        let members = frame
            .payload
            .as_ref()
            .and_then(|p| p.get("presence"))
            .and_then(|p| serde_json::from_value::<Vec<Member>>(p.clone()).ok());
        if let Some(members) = members {
            send(
                state,
                SubscriptionEvent::Presence(PresenceEvent::Members(members)),
            );
        }
        if !recovered {
            let since_seq = state.last_seq.unwrap_or(0);
            send(
                state,
                SubscriptionEvent::Gap(Gap {
                    room: room.to_owned(),
                    since_seq,
                    seq,
                    reset: false,
                }),
            );
        }
        None
    }

    /// A `presence.join` / `presence.leave` push, for the room's subscription.
    pub(crate) fn presence(&mut self, frame: &Envelope) {
        let (Some(room), Some(user)) = (frame.room.as_deref(), frame.payload_str("user")) else {
            return;
        };
        let Some(state) = self.rooms.get(room).filter(|s| !s.leaving) else {
            return;
        };
        let event = if frame.msg_type == "presence.join" {
            PresenceEvent::Joined(user.to_owned())
        } else {
            PresenceEvent::Left(user.to_owned())
        };
        send(state, SubscriptionEvent::Presence(event));
    }

    /// Delivers a room message if it is new for this client.
    pub(crate) fn message(&mut self, frame: Envelope) -> Verdict {
        let (Some(room), Some(seq)) = (frame.room.as_deref(), frame.seq) else {
            return Verdict::Untracked;
        };
        let Some(state) = self.rooms.get_mut(room) else {
            return Verdict::Untracked;
        };
        if state.subscription.is_none() || state.leaving || state.awaiting_restart {
            return Verdict::Dropped;
        }
        if let Some(last) = state.last_seq.filter(|last| seq <= *last) {
            if seq != 1 {
                return Verdict::Duplicate;
            }
            // Replays start after the seq the client asked from, which is at least 1 once
            // it has seen a message: a seq-1 frame at or below that is the first message of
            // a room that restarted its numbering under a live connection (a Redis that
            // came back empty). Report it, and count from here.
            send(
                state,
                SubscriptionEvent::Gap(Gap {
                    room: room.to_owned(),
                    since_seq: last,
                    seq: 1,
                    reset: true,
                }),
            );
        }
        state.last_seq = Some(seq);
        state.joining_live = false;
        let message = Message {
            room: room.to_owned(),
            seq,
            id: frame.id.unwrap_or_default(),
            msg_type: frame.msg_type,
            payload: frame.payload.unwrap_or(serde_json::Value::Null),
            timestamp: frame.timestamp,
        };
        send(state, SubscriptionEvent::Message(message));
        Verdict::Delivered
    }
}

fn send(state: &RoomState, event: SubscriptionEvent) {
    if let Some((_, sink)) = &state.subscription {
        // A dropped receiver sends its Unsubscribe; nothing to do here.
        let _ = sink.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(room: &str, seq: u64) -> Envelope {
        Envelope {
            msg_type: "room.message".into(),
            id: Some(format!("m{seq}")),
            room: Some(room.into()),
            seq: Some(seq),
            payload: Some(json!({ "n": seq })),
            ..Envelope::default()
        }
    }

    fn joined(room: &str, seq: u64, recovered: bool) -> Envelope {
        Envelope {
            msg_type: "room.joined".into(),
            room: Some(room.into()),
            seq: Some(seq),
            payload: Some(json!({ "recovered": recovered })),
            ..Envelope::default()
        }
    }

    #[test]
    fn duplicates_and_old_seqs_are_dropped() {
        let mut rooms = Rooms::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        rooms.attach("r", 1, tx, None);
        assert_eq!(rooms.since_for_join("r"), None);
        assert_eq!(rooms.joined(&joined("r", 2, true)), None);
        assert_eq!(rooms.message(msg("r", 2)), Verdict::Duplicate);
        assert_eq!(rooms.message(msg("r", 3)), Verdict::Delivered);
        assert_eq!(rooms.message(msg("r", 3)), Verdict::Duplicate);
        assert_eq!(rooms.message(msg("other", 1)), Verdict::Untracked);
        assert!(matches!(rx.try_recv(), Ok(SubscriptionEvent::Message(m)) if m.seq == 3));
        assert!(rx.try_recv().is_err());
        assert_eq!(rooms.resume_rooms().get("r"), Some(&3));
    }

    #[test]
    fn unrecovered_rejoin_and_reset_are_reported() {
        let mut rooms = Rooms::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        rooms.attach("r", 1, tx, Some(5));
        assert_eq!(rooms.joined(&joined("r", 9, false)), None);
        assert!(
            matches!(rx.try_recv(), Ok(SubscriptionEvent::Gap(g)) if !g.reset && g.since_seq == 5)
        );
        // The room restarted: seq below ours.
        assert_eq!(rooms.joined(&joined("r", 1, false)), Some("r".into()));
        assert!(
            matches!(rx.try_recv(), Ok(SubscriptionEvent::Gap(g)) if g.reset && g.since_seq == 5 && g.seq == 1)
        );
        assert_eq!(rooms.message(msg("r", 1)), Verdict::Dropped);
        assert_eq!(rooms.joined(&joined("r", 1, true)), None);
        assert_eq!(rooms.message(msg("r", 1)), Verdict::Delivered);
    }

    #[test]
    fn a_room_that_restarts_under_a_live_connection_is_reported_not_dropped() {
        let mut rooms = Rooms::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        rooms.attach("r", 1, tx, Some(0));
        for seq in 1..=5 {
            assert_eq!(rooms.message(msg("r", seq)), Verdict::Delivered);
        }
        assert_eq!(rooms.message(msg("r", 4)), Verdict::Duplicate);
        // The room starts over at 1 while connected: a reset gap, then the message.
        assert_eq!(rooms.message(msg("r", 1)), Verdict::Delivered);
        assert_eq!(rooms.message(msg("r", 2)), Verdict::Delivered);
        let events: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(events.len(), 5 + 3);
        assert!(
            matches!(&events[5], SubscriptionEvent::Gap(g) if g.reset && g.since_seq == 5 && g.seq == 1)
        );
        assert!(matches!(&events[6], SubscriptionEvent::Message(m) if m.seq == 1));
        assert_eq!(rooms.resume_rooms().get("r"), Some(&2));
    }
}
