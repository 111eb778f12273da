//! Wire protocol v1: envelope parsing and encoding, message types, error and close codes.
//!
//! Everything a client can observe on the wire is defined here and used by name elsewhere
//! (tests included), so the protocol reference in `docs/PROTOCOL.md` has one source.

pub mod codes;
pub(crate) mod frame;
pub mod types;

pub use codes::{close, ErrorCode};
pub use frame::{valid_room_name, MAX_MESSAGE_ID_BYTES};
