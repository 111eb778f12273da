//! WebSocket transport shared by every route: inbound message assembly with the checks
//! RFC 6455 asks for, and the bounded outbound queue with the task that writes it.

pub mod inbound;
pub mod outbound;

pub use inbound::{Assembler, InboundEvent, TransportError};
pub use outbound::{Outbound, OutboundReceiver, SendError};
