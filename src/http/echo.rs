//! Conformance echo route (`conformance.echo_path`, off by default): echoes text and binary
//! messages through the same transport checks the broker uses, so the Autobahn|Testsuite
//! exercises the real frame handling.

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use crate::transport::{self, Assembler, InboundEvent};
use crate::Broker;

/// `GET <echo_path>`: a WebSocket that sends back what it receives.
pub async fn echo(
    req: HttpRequest,
    body: web::Payload,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    let max = broker.config().conformance.echo_max_message_bytes;
    let body = transport::limit_frames(&req, body, max)?;
    let (response, mut ws, stream) = actix_ws::handle(&req, body)?;
    let mut stream = stream.max_frame_size(max);
    actix_rt::spawn(async move {
        let mut assembler = Assembler::new(max);
        while let Some(item) = stream.recv().await {
            let sent = match assembler.push(item) {
                Ok(None) => Ok(()),
                Ok(Some(InboundEvent::Text(text))) => ws.text(text).await,
                Ok(Some(InboundEvent::Binary(bin))) => ws.binary(bin).await,
                Ok(Some(InboundEvent::Ping(bytes))) => ws.pong(&bytes).await,
                Ok(Some(InboundEvent::Pong)) => Ok(()),
                Ok(Some(InboundEvent::Close(reason))) => {
                    let _ = ws.close(reason).await;
                    return;
                }
                Err(err) => {
                    let _ = ws.close(err.close_reason()).await;
                    return;
                }
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(response)
}
