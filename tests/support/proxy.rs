//! A TCP proxy between a test's clients and its brokers that cuts connections the way a
//! network does: both sockets end at once, so the client and the broker each see the TCP
//! connection end without a WebSocket close frame. While held, new connections wait
//! (accepted, not yet forwarded), so a test can decide what happens before a client is back.
//! Connection `k` (0, 1, 2, … in the order they are forwarded) goes to `route(k)`, so a
//! reconnecting client can be sent to another broker of a cluster.
//!
//! Plain threads and blocking sockets: it works under any runtime, or none.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};

type Route = Box<dyn FnMut(usize) -> SocketAddr + Send>;

struct State {
    route: Route,
    /// Connections forwarded so far.
    forwarded: usize,
    /// Both sockets of every forwarded connection not yet cut (clones of the pipes' own).
    open: Vec<TcpStream>,
    /// `Some` while held: the connections waiting to be forwarded.
    held: Option<Vec<TcpStream>>,
    stopped: bool,
}

/// The proxy; dropping it cuts every connection and stops accepting.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    /// A proxy on `127.0.0.1:0` sending connection `k` to `route(k)`.
    pub fn start(route: impl FnMut(usize) -> SocketAddr + Send + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(Mutex::new(State {
            route: Box::new(route),
            forwarded: 0,
            open: Vec::new(),
            held: None,
            stopped: false,
        }));
        let accepting = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let mut state = lock(&accepting);
                if state.stopped {
                    return;
                }
                let Ok(client) = client else { continue };
                match &mut state.held {
                    Some(waiting) => waiting.push(client),
                    None => forward(&mut state, client),
                }
            }
        });
        Proxy { addr, state }
    }

    /// `ws://proxy/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// How many connections were forwarded so far.
    pub fn forwarded(&self) -> usize {
        lock(&self.state).forwarded
    }

    /// Ends every forwarded connection: both sides see the TCP connection end, no close frame.
    pub fn cut(&self) {
        for socket in lock(&self.state).open.drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// New connections wait until [`Proxy::release`].
    pub fn hold(&self) {
        lock(&self.state).held.get_or_insert_with(Vec::new);
    }

    /// Forwards the connections that waited, and the next ones at once.
    pub fn release(&self) {
        let mut state = lock(&self.state);
        for client in state.held.take().unwrap_or_default() {
            forward(&mut state, client);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.state);
            state.stopped = true;
            state.held = None;
        }
        self.cut();
        // Wakes the accepting thread, which then sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connects `client` to its broker and copies bytes both ways on two threads. A broker that
/// cannot be reached ends the client's connection (it sees a failed attempt).
fn forward(state: &mut State, client: TcpStream) {
    let k = state.forwarded;
    state.forwarded += 1;
    let upstream = (state.route)(k);
    if let Err(e) = connect(state, client, upstream) {
        eprintln!("proxy: connection {k} to {upstream}: {e}");
    }
}

fn connect(state: &mut State, client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let upstream = TcpStream::connect(upstream)?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    state.open.push(client.try_clone()?);
    state.open.push(upstream.try_clone()?);
    let (client_in, upstream_out) = (client.try_clone()?, upstream.try_clone()?);
    std::thread::spawn(move || pipe(client_in, upstream_out));
    std::thread::spawn(move || pipe(upstream, client));
    Ok(())
}

/// Copies until `from` ends (or is cut), then passes the end on to `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// The cut-and-resume scenario of the delivery tests. `publisher` publishes messages
/// 1..=`total` (the payload is the number) into `room`, in windows of 20, each acknowledged
/// (with seq = the number) before the next. Meanwhile `subscriber`, connected through this
/// proxy, is cut `cuts` times at even intervals, each time held out until half an interval
/// more is published, which only its resume can bring back. `stream` (its subscription of
/// `room`, from seq 0) must yield every message exactly once, in order, with no gap; each
/// cut must have ended one connection, and no resume may have replayed a message twice.
pub async fn stream_through_cuts(
    proxy: &Proxy,
    publisher: &switchboard_client::Client,
    room: &str,
    subscriber: &switchboard_client::Client,
    stream: &mut switchboard_client::Subscription,
    total: u64,
    cuts: u64,
) {
    use crate::support::{next_connected, next_message, wait_count, WAIT};
    let share = total / (cuts + 1);
    let mut states = subscriber.state_changes();
    let (acked, mut published) = tokio::sync::watch::channel(0u64);
    let publishing = async {
        for first in (1..=total).step_by(20) {
            let window = (first..(first + 20).min(total + 1))
                .map(|n| publisher.publish(room, serde_json::json!(n)));
            let acks = tokio::time::timeout(WAIT, futures_util::future::join_all(window))
                .await
                .expect("acks in time");
            for (n, ack) in (first..).zip(acks) {
                assert_eq!(ack.expect("an ack").seq, n);
                acked.send_replace(n);
            }
        }
    };
    let cutting = async {
        for cut in 1..=cuts {
            wait_count(&mut published, cut * share).await;
            proxy.hold();
            proxy.cut();
            // Published while the subscriber is out: only its resume can bring these back.
            wait_count(&mut published, cut * share + share / 2).await;
            proxy.release();
            next_connected(&mut states).await;
        }
    };
    let reading = async {
        for seq in 1..=total {
            let message = next_message(stream).await;
            assert_eq!(
                (message.seq, &message.payload),
                (seq, &serde_json::json!(seq)),
                "every message exactly once, in order"
            );
        }
    };
    futures_util::join!(publishing, cutting, reading);
    let stats = subscriber.stats();
    assert_eq!(stats.reconnects, cuts, "each cut ended one connection");
    assert_eq!(
        stats.duplicates_dropped, 0,
        "no resume replayed a message twice"
    );
}
