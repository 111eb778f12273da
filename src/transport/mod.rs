//! WebSocket transport shared by every route: the frame-size guard in front of the parser,
//! inbound message assembly with the checks RFC 6455 asks for, and the bounded outbound
//! queue with the task that writes it.

pub mod admission;
pub mod guard;
pub mod inbound;
pub mod outbound;
pub mod socket;

use actix_web::{web, FromRequest, HttpRequest};

pub use guard::FrameLimit;
pub use inbound::{Assembler, InboundEvent};
pub use outbound::{Outbound, SendError};

/// The body of a WebSocket upgrade request with [`FrameLimit`] in front: a frame or
/// fragmented message declared larger than `max_bytes` ends the stream at its header.
pub fn limit_frames(
    req: &HttpRequest,
    body: web::Payload,
    max_bytes: usize,
) -> Result<web::Payload, actix_web::Error> {
    let guarded = FrameLimit::new(body.into_inner(), max_bytes);
    let mut payload = actix_web::dev::Payload::Stream {
        payload: Box::pin(guarded) as actix_http::BoxedPayloadStream,
    };
    // `web::Payload` has no public constructor; its extractor takes the payload it is given.
    web::Payload::from_request(req, &mut payload).into_inner()
}
