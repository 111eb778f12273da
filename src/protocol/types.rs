//! Message type names of protocol v1.

/// Client → server: join a room (`payload.since_seq` optional).
pub const ROOM_JOIN: &str = "room.join";
/// Client → server: leave a room.
pub const ROOM_LEAVE: &str = "room.leave";
/// Client → server: publish to a room.
pub const ROOM_PUBLISH: &str = "room.publish";
/// Server → client: a message published in a room.
pub const ROOM_MESSAGE: &str = "room.message";
/// Server → client: the join succeeded.
pub const ROOM_JOINED: &str = "room.joined";
/// Server → client: the leave succeeded.
pub const ROOM_LEFT: &str = "room.left";
/// Server → client: a publish was accepted and sequenced.
pub const ACK: &str = "ack";
/// Either direction: liveness probe.
pub const SYSTEM_PING: &str = "system.ping";
/// Either direction: answer to `system.ping`.
pub const SYSTEM_PONG: &str = "system.pong";
/// Server → client: first frame of every session.
pub const SYSTEM_CONNECTION_ESTABLISHED: &str = "system.connection.established";
/// Server → client: the server is about to close the socket, and why.
pub const SYSTEM_CONNECTION_CLOSE: &str = "system.connection.close";
/// Client → server: resume a dropped session: rejoin its rooms, replay the gaps.
pub const SYSTEM_CONNECTION_RESUME: &str = "system.connection.resume";
/// Server → client: the answer to `system.connection.resume`, per room.
pub const SYSTEM_CONNECTION_RESUMED: &str = "system.connection.resumed";
/// Server → client: something the client sent could not be acted on.
pub const SYSTEM_ERROR: &str = "system.error";
/// Server → client: a user came into a room (presence on).
pub const PRESENCE_JOIN: &str = "presence.join";
/// Server → client: a user's last connection left a room (presence on).
pub const PRESENCE_LEAVE: &str = "presence.leave";

/// What a client may ask of the broker itself: the one list of client commands, for the
/// session's dispatch and the metrics labels alike. Every other type is either unknown (in
/// the broker's `room.` / `system.` name space) or goes to an application handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `room.join`
    Join,
    /// `room.leave`
    Leave,
    /// `room.publish`
    Publish,
    /// `system.ping`
    Ping,
    /// `system.pong`
    Pong,
    /// `system.connection.resume`
    Resume,
}

impl Command {
    /// Every command.
    pub const ALL: [Command; 6] = [
        Command::Join,
        Command::Leave,
        Command::Publish,
        Command::Ping,
        Command::Pong,
        Command::Resume,
    ];

    /// The command a message type names, if it names one.
    pub fn from_type(msg_type: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.msg_type() == msg_type)
    }

    /// Its message type on the wire.
    pub fn msg_type(self) -> &'static str {
        match self {
            Command::Join => ROOM_JOIN,
            Command::Leave => ROOM_LEAVE,
            Command::Publish => ROOM_PUBLISH,
            Command::Ping => SYSTEM_PING,
            Command::Pong => SYSTEM_PONG,
            Command::Resume => SYSTEM_CONNECTION_RESUME,
        }
    }
}

/// Whether `msg_type` belongs to the broker itself rather than to an application handler.
///
/// Broker types are handled inside the session; everything else goes to the Router.
pub fn is_broker_type(msg_type: &str) -> bool {
    msg_type.starts_with("room.") || msg_type.starts_with("system.")
}

/// Whether `msg_type` is one only the broker itself may send (broker types, presence
/// events, acks): servers publishing through the API may not forge them.
pub fn is_reserved(msg_type: &str) -> bool {
    is_broker_type(msg_type) || msg_type.starts_with("presence.") || msg_type == ACK
}

/// The `system.connection.close` reason sent before a graceful shutdown.
pub const REASON_SERVER_SHUTDOWN: &str = "server_shutdown";

/// The room every session joins by itself; a publish to it reaches every session.
pub const BROADCAST_ROOM: &str = "broadcast";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_broker_types_and_round_trip() {
        for command in Command::ALL {
            assert!(is_broker_type(command.msg_type()), "{command:?}");
            assert_eq!(Command::from_type(command.msg_type()), Some(command));
        }
        assert_eq!(Command::from_type("room.explode"), None);
        assert_eq!(Command::from_type("task.run"), None);
    }
}
