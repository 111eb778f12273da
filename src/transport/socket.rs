//! Cutting a connection's TCP socket from the session: the write deadline.
//!
//! After the upgrade, actix-http's dispatcher owns the socket and writes what the session
//! queued. A peer that stops reading leaves those writes pending forever: the dispatcher
//! has no write timeout, a close frame cannot be flushed either, and the connection (with
//! its buffers) would stay until the kernel gives up, which a peer that keeps ACKing with
//! a zero window can postpone indefinitely. So every connection's socket is duplicated
//! when it is accepted ([`on_connect`]), and a session whose writes stall for
//! `limits.write_timeout`, or whose close is not finished within it, resets the socket
//! through that duplicate ([`SocketHandle::reset`]): `SO_LINGER` 0 and a shutdown of the read
//! side, so the dispatcher reads end-of-stream, drops the connection, and the kernel sends
//! RST instead of holding unsent data.
//!
//! The duplicate lives in the connection's data, which the dispatcher drops with the
//! connection; sessions hold only a weak reference. A reset after the connection is gone is
//! therefore a no-op and can never reach a socket that reused the descriptor number. The
//! cost is one more file descriptor per connection (raise `ulimit -n` accordingly).
//!
//! switchboard's own server takes WebSocket connections out of the dispatcher
//! ([`super::takeover`]) and needs no duplicate: the handle reaches the socket the session's
//! reader and writer share, and the same reset ends both.

use std::any::Any;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::HttpRequest;

use super::owned::{Io, SharedIo};

/// The duplicate of an accepted connection's socket, kept in its connection data.
struct ConnectionSocket(Arc<OwnedFd>);

/// Installs each accepted connection's socket duplicate: pass to `HttpServer::on_connect`.
/// (Embedders who mount the broker in their own server add it there to get the write
/// deadline; without it sessions still work, and only the TCP-level cut is missing.)
pub fn on_connect(connection: &dyn Any, data: &mut Extensions) {
    if let Some(tcp) = connection.downcast_ref::<actix_rt::net::TcpStream>() {
        install(tcp, data);
    } else if let Some(tls) = connection.downcast_ref::<TlsStream<actix_rt::net::TcpStream>>() {
        install(tls.get_ref().0, data);
    }
}

fn install(tcp: &actix_rt::net::TcpStream, data: &mut Extensions) {
    match tcp.as_fd().try_clone_to_owned() {
        Ok(fd) => {
            data.insert(ConnectionSocket(Arc::new(fd)));
        }
        // Out of descriptors: this connection goes without the cut, not without service.
        Err(e) => log::warn!("no socket duplicate for the write deadline: {e}"),
    }
}

/// A session's way to cut its connection's TCP socket.
#[derive(Clone, Default)]
pub struct SocketHandle(Target);

#[derive(Clone, Default)]
enum Target {
    /// The server kept no way to reach the socket.
    #[default]
    None,
    /// The duplicate [`on_connect`] keeps while the dispatcher owns the connection.
    Duplicate(Weak<OwnedFd>),
    /// The socket the broker took over ([`super::owned`]).
    Owned(std::rc::Weak<std::cell::RefCell<dyn Io>>),
}

impl std::fmt::Debug for SocketHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketHandle")
            .field("open", &self.is_open())
            .finish()
    }
}

impl SocketHandle {
    /// The handle of the connection `req` came in on (a no-op handle when the server did
    /// not install [`on_connect`]).
    pub fn of(req: &HttpRequest) -> SocketHandle {
        SocketHandle(
            req.conn_data::<ConnectionSocket>()
                .map_or(Target::None, |socket| {
                    Target::Duplicate(Arc::downgrade(&socket.0))
                }),
        )
    }

    /// The handle of a socket taken over from the dispatcher.
    pub(crate) fn owned(io: &SharedIo) -> SocketHandle {
        SocketHandle(Target::Owned(std::rc::Rc::downgrade(io)))
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        match &self.0 {
            Target::None => false,
            Target::Duplicate(fd) => fd.strong_count() > 0,
            Target::Owned(io) => io.strong_count() > 0,
        }
    }

    /// Resets the connection now (RST, unsent data discarded); false when it was already
    /// gone.
    pub fn reset(&self) -> bool {
        match &self.0 {
            Target::None => false,
            Target::Duplicate(fd) => fd.upgrade().is_some_and(|fd| {
                reset(socket2::SockRef::from(&*fd));
                true
            }),
            Target::Owned(io) => io.upgrade().is_some_and(|io| {
                // Never borrowed across an await, so free whenever a task runs this.
                if let Ok(io) = io.try_borrow() {
                    reset(socket2::SockRef::from(io.tcp()));
                }
                true
            }),
        }
    }

    /// Resets the connection after `delay` unless it has closed by then (and then calls
    /// `on_reset`): the bound on a close handshake the peer does not finish.
    pub fn reset_after(&self, delay: Duration, on_reset: impl FnOnce() + 'static) {
        if !self.is_open() {
            return;
        }
        let handle = self.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep(delay).await;
            if handle.reset() {
                log::info!("connection reset: its close did not finish within {delay:?}");
                on_reset();
            }
        });
    }
}

/// Linger 0 makes the final close send RST instead of waiting to flush data the peer will
/// not read. Shutting the read side wakes whoever reads the socket (the dispatcher, or the
/// session's reader), which reads end-of-stream and drops the connection; the write side is
/// left alone, since a FIN sent first would turn the reset into a clean end for a peer with
/// nothing unread.
fn reset(socket: socket2::SockRef<'_>) {
    let _ = socket.set_linger(Some(Duration::ZERO));
    let _ = socket.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_reset_sends_rst_and_a_dropped_connection_is_left_alone() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let owner = Arc::new(OwnedFd::from(server));
        let handle = SocketHandle(Target::Duplicate(Arc::downgrade(&owner)));
        assert!(handle.is_open());
        client.write_all(b"unread").expect("write");
        assert!(handle.reset());
        drop(owner); // the dispatcher drops the connection
        let mut buf = [0u8; 16];
        let err = client.read(&mut buf).expect_err("reset");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert!(!handle.is_open());
        assert!(
            !handle.reset(),
            "nothing to reset once the connection is gone"
        );
    }
}
