//! Conformance echo route (`conformance.echo_path`, off by default): echoes text and binary
//! messages through the same transport checks the broker uses, so the Autobahn|Testsuite
//! exercises the real frame handling.

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use futures_util::StreamExt;

use crate::transport::{self, Assembler, InboundEvent, WebSocket};
use crate::Broker;

/// `GET <echo_path>`: a WebSocket that sends back what it receives.
pub async fn echo(
    req: HttpRequest,
    body: web::Payload,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    let max = broker.config().conformance.echo_max_message_bytes;
    let deflate = broker.config().server.permessage_deflate;
    let response = transport::accept(&req, body, &[], max, deflate, move |ws| {
        actix_rt::spawn(async move {
            let WebSocket {
                mut reader,
                mut writer,
                ..
            } = ws;
            let mut assembler = Assembler::new(max);
            while let Some(item) = reader.next().await {
                let sent = match assembler.push(item) {
                    Ok(None) => Ok(()),
                    Ok(Some(InboundEvent::Text(text))) => writer.text(text).await,
                    Ok(Some(InboundEvent::Binary(bin))) => writer.binary(bin).await,
                    Ok(Some(InboundEvent::Ping(bytes))) => writer.pong(bytes).await,
                    Ok(Some(InboundEvent::Pong)) => Ok(()),
                    Ok(Some(InboundEvent::Close(reason))) => {
                        let _ = writer.close(reason).await;
                        return;
                    }
                    Err(err) => {
                        let _ = writer.close(err.close_reason()).await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        });
    })?;
    Ok(response)
}
