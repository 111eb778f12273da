//! The chaos proxy: an in-process TCP proxy on `127.0.0.1:0` between clients and a broker
//! that drops connections, cuts them mid-frame, half-closes them, stalls them and delays
//! bytes. Every random choice comes from one seeded RNG (print the seed; set
//! `CHAOS_SEED` to replay a run).

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

/// What the proxy does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Close both sides at once.
    Drop,
    /// Forward only part of the next chunk from the broker (inside a WebSocket frame), then
    /// close both sides.
    CutMidFrame,
    /// Shut down the write side toward the client (it reads EOF), then close when the
    /// client does.
    HalfClose,
    /// Stop reading both sides for a while, then carry on (not a cut).
    Stall(Duration),
}

impl Fault {
    /// True for faults that end the connection.
    pub fn is_cut(&self) -> bool {
        !matches!(self, Fault::Stall(_))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Drop => f.write_str("drop"),
            Fault::CutMidFrame => f.write_str("cut-mid-frame"),
            Fault::HalfClose => f.write_str("half-close"),
            Fault::Stall(d) => write!(f, "stall {}ms", d.as_millis()),
        }
    }
}

struct Conn {
    faults: mpsc::UnboundedSender<Fault>,
}

/// The proxy. Dropping it stops accepting; open connections end when either side closes.
pub struct ChaosProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    rng: Mutex<StdRng>,
    conns: Arc<Mutex<Vec<Conn>>>,
    accept: JoinHandle<()>,
}

impl ChaosProxy {
    /// Starts a proxy to `upstream`. With `delay_bytes`, about 2% of chunks are held
    /// for 1-5 ms.
    pub async fn start(upstream: SocketAddr, seed: u64, delay_bytes: bool) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let mut rng = StdRng::seed_from_u64(seed);
        let conn_seeds = StdRng::seed_from_u64(rng.random());
        let accept = tokio::spawn({
            let conns = conns.clone();
            let mut conn_seeds = conn_seeds;
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (tx, rx) = mpsc::unbounded_channel();
                    conns.lock().unwrap().push(Conn { faults: tx });
                    let seed = conn_seeds.random();
                    tokio::spawn(pipe(client, upstream, rx, seed, delay_bytes));
                }
            }
        });
        ChaosProxy {
            addr,
            rng: Mutex::new(rng),
            conns,
            accept,
        }
    }

    /// `ws://proxy/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Live connections.
    pub fn live(&self) -> usize {
        let mut conns = self.conns.lock().unwrap();
        conns.retain(|c| !c.faults.is_closed());
        conns.len()
    }

    /// Applies a random cut (drop, mid-frame cut or half-close) to a random live
    /// connection; `None` when there is none.
    pub fn cut(&self) -> Option<Fault> {
        let fault = match self.rng.lock().unwrap().random_range(0..3) {
            0 => Fault::Drop,
            1 => Fault::CutMidFrame,
            _ => Fault::HalfClose,
        };
        self.apply(fault)
    }

    /// Stalls a random live connection for 20-200 ms.
    pub fn stall(&self) -> Option<Fault> {
        let ms = self.rng.lock().unwrap().random_range(20..200);
        self.apply(Fault::Stall(Duration::from_millis(ms)))
    }

    fn apply(&self, fault: Fault) -> Option<Fault> {
        let mut conns = self.conns.lock().unwrap();
        conns.retain(|c| !c.faults.is_closed());
        if conns.is_empty() {
            return None;
        }
        let i = self.rng.lock().unwrap().random_range(0..conns.len());
        conns[i].faults.send(fault).ok()?;
        if fault.is_cut() {
            conns.remove(i);
        }
        Some(fault)
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for conn in self.conns.lock().unwrap().iter() {
            let _ = conn.faults.send(Fault::Drop);
        }
    }
}

/// Carries bytes both ways until a side closes or a fault ends the connection.
async fn pipe(
    client: TcpStream,
    upstream: SocketAddr,
    mut faults: mpsc::UnboundedReceiver<Fault>,
    seed: u64,
    delay_bytes: bool,
) {
    let Ok(broker) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut cr, mut cw) = client.into_split();
    let (mut br, mut bw) = broker.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    // Armed by CutMidFrame: cut inside the next chunk from the broker, or at this deadline.
    let mut cut_at: Option<Instant> = None;
    let mut half_closed = false;
    loop {
        tokio::select! {
            n = cr.read(&mut up) => {
                let Ok(n @ 1..) = n else { break };
                if delay_bytes && rng.random_bool(0.02) {
                    sleep(Duration::from_millis(rng.random_range(1..=5))).await;
                }
                if bw.write_all(&up[..n]).await.is_err() {
                    break;
                }
            }
            n = br.read(&mut down) => {
                let Ok(n @ 1..) = n else { break };
                if half_closed {
                    continue; // the client can no longer be written to
                }
                if cut_at.is_some() {
                    let keep = if n > 1 { rng.random_range(1..n) } else { 0 };
                    let _ = cw.write_all(&down[..keep]).await;
                    break;
                }
                if delay_bytes && rng.random_bool(0.02) {
                    sleep(Duration::from_millis(rng.random_range(1..=5))).await;
                }
                if cw.write_all(&down[..n]).await.is_err() {
                    break;
                }
            }
            fault = faults.recv() => match fault {
                None | Some(Fault::Drop) => break,
                Some(Fault::CutMidFrame) => cut_at = Some(Instant::now() + Duration::from_millis(300)),
                Some(Fault::HalfClose) => {
                    half_closed = true;
                    let _ = cw.shutdown().await;
                }
                Some(Fault::Stall(d)) => sleep(d).await,
            },
            _ = sleep_until(cut_at.unwrap_or_else(Instant::now)), if cut_at.is_some() => break,
        }
    }
    // Dropping the halves closes both connections.
}
