//! A deadline on reading a request body.
//!
//! actix-web bounds how long a client may take to send the request head, not the body: a
//! caller with a valid API key trickling one byte every few seconds would hold a worker's
//! connection for as long as it likes. [`deadline`] wraps every API request's body in
//! [`BodyDeadline`], which fails the read once `api.body_timeout` has passed since the
//! request arrived; the JSON extractor then answers 408 and the connection is closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::error::PayloadError;
use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use actix_web::HttpMessage;
use bytes::Bytes;
use futures_util::Stream;
use tokio::time::Sleep;

use crate::Broker;

/// Middleware: gives the request body `api.body_timeout` to arrive in full.
pub async fn deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let timeout = req
        .app_data::<web::Data<Broker>>()
        .map(|b| b.config().api.body_timeout);
    if let Some(timeout) = timeout {
        let body = BodyDeadline::new(req.take_payload(), timeout);
        req.set_payload(Payload::Stream {
            payload: Box::pin(body),
        });
    }
    next.call(req).await
}

/// A body stream that fails with [`io::ErrorKind::TimedOut`] once its time is up.
pub struct BodyDeadline<S> {
    inner: S,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    done: bool,
}

impl<S> BodyDeadline<S> {
    /// `inner`, which must end within `timeout` from now.
    pub fn new(inner: S, timeout: Duration) -> Self {
        BodyDeadline {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            done: false,
        }
    }
}

/// Whether an extractor's payload error is [`BodyDeadline`]'s.
pub fn is_timeout(err: &PayloadError) -> bool {
    matches!(err, PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut)
}

impl<S> Stream for BodyDeadline<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(item) => Poll::Ready(item),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "request body not received within {:?} (api.body_timeout)",
                            this.timeout
                        ),
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[actix_rt::test]
    async fn a_body_that_does_not_end_in_time_fails_and_one_that_does_passes() {
        let never = futures_util::stream::pending::<Result<Bytes, PayloadError>>();
        let mut slow = BodyDeadline::new(never, Duration::from_millis(20));
        match slow.next().await {
            Some(Err(err)) => assert!(is_timeout(&err), "{err}"),
            other => panic!("{other:?}"),
        }
        assert!(slow.next().await.is_none());
        let quick = futures_util::stream::iter([Ok(Bytes::from_static(b"{}"))]);
        let mut quick = BodyDeadline::new(quick, Duration::from_secs(60));
        assert_eq!(
            quick.next().await.map(|r| r.ok()),
            Some(Some(Bytes::from_static(b"{}")))
        );
        assert!(quick.next().await.is_none());
    }
}
