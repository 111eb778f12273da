//! Taking a WebSocket connection out of actix-http's h1 dispatcher after its handshake.
//!
//! actix-http hands a request that asks for `Upgrade: websocket` to the service's upgrade
//! handler together with the connection itself (the `Framed` I/O). [`upgrade_service`] is
//! that handler. It runs the request through the same actix-web `App` as every other request,
//! so routing, middleware, extractors and [`crate::Broker::configure`] apply unchanged, and
//! offers the route a [`Takeover`] in the request's extensions. A route that accepts the
//! WebSocket ([`super::accept`]) answers 101 and leaves in the takeover what to run on the
//! socket; the handler writes the 101, drops the dispatcher's buffers and hands the bare
//! socket over ([`super::owned`]). Any other answer (a refusal, a 404) is written as it is
//! and the connection is closed.
//!
//! Servers that do not install the handler (an application mounting the broker in its own
//! `HttpServer`) never offer a takeover, and routes fall back to actix-ws under the
//! dispatcher: the same protocol, with the dispatcher's buffers.

use std::cell::Cell;
use std::rc::Rc;

use actix_codec::Framed;
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, HttpMessage, Request, Response, StatusCode};
use actix_service::{fn_factory, fn_service, Service, ServiceFactory};
use actix_web::dev::ServiceResponse;
use actix_web::HttpRequest;
use futures_util::SinkExt;

use super::owned::{Io, Socket};

/// What runs on the socket once the 101 is written.
type Start = Box<dyn FnOnce(Socket)>;

/// The offer of a connection's socket to the route that answers its upgrade request.
#[derive(Clone, Default)]
pub(crate) struct Takeover(Rc<Cell<Option<Start>>>);

impl Takeover {
    /// The takeover offered with `req`: `None` under a server without [`upgrade_service`].
    pub(crate) fn of(req: &HttpRequest) -> Option<Takeover> {
        req.extensions().get::<Takeover>().cloned()
    }

    /// Runs `start` on the socket once the route's 101 is written.
    pub(crate) fn accept(&self, start: impl FnOnce(Socket) + 'static) {
        self.0.set(Some(Box::new(start)));
    }
}

/// The upgrade handler for an `HttpService` whose requests `app` serves (the same `App`
/// factory as the service's, with its config already applied).
pub fn upgrade_service<T, F, B>(
    app: F,
) -> impl ServiceFactory<
    (Request, Framed<T, Codec>),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
>
where
    T: Io,
    F: ServiceFactory<
            Request,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let app = Rc::new(app);
    fn_factory(move || {
        let service = app.new_service(());
        async move {
            let service = Rc::new(service.await?);
            Ok::<_, ()>(fn_service(move |(req, framed)| {
                upgrade(service.clone(), req, framed)
            }))
        }
    })
}

/// Serves one upgrade request: the route's answer, then the socket to the route or closed.
async fn upgrade<T, S, B>(
    app: Rc<S>,
    req: Request,
    mut framed: Framed<T, Codec>,
) -> Result<(), actix_web::Error>
where
    T: Io,
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let takeover = Takeover::default();
    req.extensions_mut().insert(takeover.clone());
    let response: Response<BoxBody> = match app.call(req).await {
        Ok(res) => Response::from(res.into_parts().1).map_into_boxed_body(),
        Err(err) => Response::from(err.error_response()),
    };
    let start = takeover.0.take();
    let (mut head, body) = response.into_parts();
    if head.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(start) = start {
            framed.send(Message::Item((head, BodySize::None))).await?;
            let parts = framed.into_parts();
            // The dispatcher's write buffer and codec go here; bytes the client sent behind
            // its request (frames it did not wait to send) go with the socket.
            start(Socket::new(parts.io, parts.read_buf));
            return Ok(());
        }
        // A route that upgrades through actix-ws needs the dispatcher, which is gone.
        log::error!(
            "a WebSocket route answered 101 without taking the socket over; closing \
             (routes served by switchboard's server must accept through transport::accept)"
        );
        return Ok(());
    }
    // Not a WebSocket after all: the answer as it is, then the connection ends (what follows
    // the request on the wire would be WebSocket frames, not HTTP).
    head.head_mut().set_connection_type(ConnectionType::Close);
    let bytes = actix_http::body::to_bytes(body).await.unwrap_or_default();
    let size = BodySize::Sized(bytes.len() as u64);
    framed.send(Message::Item((head, size))).await?;
    if !bytes.is_empty() {
        framed.send(Message::Chunk(Some(bytes))).await?;
    }
    framed.send(Message::Chunk(None)).await?;
    Ok(())
}
