//! A room's stream of messages.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;

use crate::driver::Command;
use crate::{Envelope, Error, Gap, Message, PresenceEvent};

/// What a [`Subscription`] yields. More kinds of event may come in later versions, so a
/// `match` needs a catch-all arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SubscriptionEvent {
    /// The next message of the room: every seq once, in order.
    Message(Message),
    /// Messages were lost to this client (`recovered: false` on a rejoin, or the room
    /// restarted its numbering). Never hidden: it comes between the messages before and
    /// after the gap.
    Gap(Gap),
    /// Who is in the room (presence namespaces only): pushes, not numbered, not replayed.
    Presence(PresenceEvent),
    /// The broker refused the room (`forbidden`, `bad_request`, …); the stream ends after it.
    Refused(Error),
}

/// One room's messages, each seq once and in order across reconnects, as a
/// [`Stream`] of [`SubscriptionEvent`]s. Made by [`Client::subscribe`](crate::Client::subscribe).
///
/// The stream ends when the room is unsubscribed (also by another `subscribe` of the same
/// room, which takes the room over), refused, or the client closes. Dropping it leaves the
/// room. Events are buffered without bound until read, so read them.
#[derive(Debug)]
pub struct Subscription {
    room: String,
    id: u64,
    rx: mpsc::UnboundedReceiver<SubscriptionEvent>,
    commands: mpsc::WeakUnboundedSender<Command>,
}

impl Subscription {
    pub(crate) fn new(
        room: String,
        id: u64,
        rx: mpsc::UnboundedReceiver<SubscriptionEvent>,
        commands: mpsc::WeakUnboundedSender<Command>,
    ) -> Subscription {
        Subscription {
            room,
            id,
            rx,
            commands,
        }
    }

    /// The room.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Leaves the room (the same as dropping the subscription).
    pub fn unsubscribe(self) {}
}

impl Stream for Subscription {
    type Item = SubscriptionEvent;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<SubscriptionEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.send(Command::Unsubscribe {
                room: std::mem::take(&mut self.room),
                sub_id: Some(self.id),
            });
        }
    }
}

/// Application pushes: frames a handler sends to this connection on its own (a handler's
/// later messages, a task assigned to a worker), which are neither room messages nor the
/// reply to a request. Made by [`Client::pushes`](crate::Client::pushes).
///
/// Pushes are not numbered and not replayed: those sent while the client was reconnecting
/// are lost. The stream ends when the client closes or another `pushes()` replaces it.
#[derive(Debug)]
pub struct Pushes {
    rx: mpsc::UnboundedReceiver<Envelope>,
}

impl Pushes {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Envelope>) -> Pushes {
        Pushes { rx }
    }
}

impl Stream for Pushes {
    type Item = Envelope;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Envelope>> {
        self.rx.poll_recv(cx)
    }
}
