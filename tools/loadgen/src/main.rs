//! `loadgen`: opens real WebSocket connections against switchboard or a peer broker (NATS,
//! Mosquitto, a Node `ws` server) and runs one scenario: `fanout`, `rooms`, `idle` or
//! `churn`. Prints a human summary and one JSON line (also appended to `--json-out`).
//!
//! `--url` may be repeated to spread the connections over several brokers (the nodes of one
//! cluster): subscribers go round-robin over every URL given, the publisher uses the first.
//!
//! It runs on one thread (pin it with `taskset`); every loop is bounded by counts and
//! timeouts, and it only connects to loopback addresses.

mod procfs;
mod proto;
mod report;
mod scenario;
mod table;

use std::io::Write;
use std::time::Duration;

use clap::{Parser, Subcommand};

use proto::{Endpoint, Target};
use report::Report;
use scenario::{Common, RoomsPlan};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "WebSocket load generator for switchboard and its peers"
)]
struct Cli {
    /// Protocol of the broker under test.
    #[arg(long, value_enum, global = true, default_value = "switchboard")]
    target: Target,
    /// WebSocket URL (loopback only); default: the port scripts/bench.sh uses for the target.
    /// Repeat it to spread subscribers (and idle/churn connections) round-robin over several
    /// brokers, e.g. the nodes of one cluster; the publisher uses the first. Give every
    /// `--url` on the same side of the scenario name (those after it replace those before).
    #[arg(long, global = true)]
    url: Vec<String>,
    /// Local loopback address to connect from (e.g. 127.0.0.2). Repeat it to spread the
    /// connections round-robin over several: each source address has its own range of
    /// ephemeral ports (about 28,000 by default), so 100,000 connections to one broker need
    /// four. Default: the kernel's choice.
    #[arg(long, global = true)]
    source: Vec<std::net::IpAddr>,
    /// Subprotocol to offer (default: switchboard.v1 / mqtt / none; "" for none).
    #[arg(long, global = true)]
    subprotocol: Option<String>,
    /// The broker's process id: its CPU time and memory are read from /proc. Repeat it (or
    /// separate ids with commas) for a broker of several processes: their sum is reported.
    /// Like `--url`, all on one side of the scenario name.
    #[arg(long, global = true, value_delimiter = ',')]
    broker_pid: Vec<String>,
    /// A Redis server's process id (fanout/rooms): its CPU time over the measured window is
    /// reported apart from the broker's.
    #[arg(long, global = true)]
    redis_pid: Option<String>,
    /// Connections opened concurrently per batch.
    #[arg(long, global = true, default_value_t = 100)]
    batch: usize,
    /// Pause between connection batches, in milliseconds.
    #[arg(long, global = true, default_value_t = 0)]
    batch_pause_ms: u64,
    /// Payload size in bytes (at least ~40: it carries a timestamp and a sequence number).
    #[arg(long, global = true, default_value_t = 64)]
    payload: usize,
    /// Seconds to wait for missing deliveries once nothing more arrives.
    #[arg(long, global = true, default_value_t = 5.0)]
    drain_timeout: f64,
    /// MQTT keepalive announced in CONNECT, in seconds.
    #[arg(long, global = true, default_value_t = 30)]
    mqtt_keepalive: u16,
    /// MQTT: seconds between a client's PINGREQs.
    #[arg(long, global = true, default_value_t = 10.0)]
    client_ping: f64,
    /// WebSocket read buffer per connection, in bytes (default 8 KiB, 4 KiB for idle/churn).
    #[arg(long, global = true)]
    read_buffer: Option<usize>,
    /// A name for this run in the report (default: the scenario).
    #[arg(long, global = true)]
    label: Option<String>,
    /// Also append the JSON line to this file.
    #[arg(long, global = true)]
    json_out: Option<std::path::PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// S subscribers in one room, one publisher, M messages.
    Fanout {
        /// Subscribers.
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        /// Messages published.
        #[arg(long, default_value_t = 1000)]
        messages: u64,
        /// Messages per second (default: as fast as the window allows).
        #[arg(long)]
        rate: Option<f64>,
        /// Messages in flight at most (published but not yet delivered everywhere); 0 = no
        /// limit.
        #[arg(long, default_value_t = 100)]
        window: u64,
    },
    /// R rooms of k subscribers; the publisher goes round-robin over the rooms.
    Rooms {
        /// Rooms.
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        /// Subscribers per room.
        #[arg(long, default_value_t = 5)]
        per_room: usize,
        /// Messages published in total.
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Messages per second (default: as fast as the window allows).
        #[arg(long)]
        rate: Option<f64>,
        /// Messages in flight at most; 0 = no limit.
        #[arg(long, default_value_t = 1000)]
        window: u64,
    },
    /// N connections held idle for T seconds, answering heartbeats (memory per connection).
    Idle {
        /// Connections.
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Rooms they join (connection i joins room i mod rooms).
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Seconds to hold them (0: just measure the ramp).
        #[arg(long, default_value_t = 60.0)]
        hold: f64,
    },
    /// Workers loop connect → join → leave → close.
    Churn {
        /// Concurrent workers.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Cycles in total.
        #[arg(long, default_value_t = 5000)]
        count: u64,
        /// Stop after this many seconds even if `count` is not reached.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Rooms the workers spread over.
        #[arg(long, default_value_t = 10)]
        rooms: usize,
    },
    /// Prints a Markdown table of JSON result lines (one file of `--json-out` lines), one
    /// column per target and switchboard/peer ratios.
    Table {
        /// Files of JSON result lines.
        files: Vec<std::path::PathBuf>,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout { .. } => "fanout",
            Scenario::Rooms { .. } => "rooms",
            Scenario::Idle { .. } => "idle",
            Scenario::Churn { .. } => "churn",
            Scenario::Table { .. } => "table",
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Scenario::Table { files } = &cli.scenario {
        match table::render(files) {
            Ok(t) => print!("{t}"),
            Err(e) => {
                eprintln!("loadgen table: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let nofile = procfs::raise_nofile();
    // tungstenite zero-fills up to this many bytes before every read, the reads that find
    // nothing included: at 64 KiB that memset was 16 % of the load generator's time in a
    // batched fan-out, and 8 KiB cut its CPU per delivery by 5-10 % against both switchboard
    // and NATS. Larger frames still arrive whole, over several reads.
    let read_buffer = cli.read_buffer.unwrap_or(match cli.scenario {
        Scenario::Idle { .. } | Scenario::Churn { .. } => 4096,
        _ => 8 * 1024,
    });
    // One endpoint per URL (the target's default URL when none is given); the first is
    // the publisher's.
    let urls: Vec<Option<String>> = if cli.url.is_empty() {
        vec![None]
    } else {
        cli.url.iter().cloned().map(Some).collect()
    };
    let mut eps = Vec::with_capacity(urls.len());
    for url in urls {
        match Endpoint::new(
            cli.target,
            url,
            cli.subprotocol.clone(),
            cli.mqtt_keepalive,
            read_buffer,
        ) {
            Ok(ep) => eps.push(ep),
            Err(e) => {
                eprintln!("loadgen: {e}");
                std::process::exit(2);
            }
        }
    }
    if let Some(ip) = cli.source.iter().find(|ip| !ip.is_loopback()) {
        eprintln!("loadgen: refusing non-loopback source {ip}: loopback only");
        std::process::exit(2);
    }
    // Every (source, broker) pair is an endpoint of its own, so that the round-robin over
    // endpoints spreads connections over both.
    if !cli.source.is_empty() {
        eps = cli
            .source
            .iter()
            .flat_map(|ip| {
                eps.iter().map(move |ep| Endpoint {
                    source: Some(*ip),
                    ..ep.clone()
                })
            })
            .collect();
    }
    let ep = eps[0].clone();
    let broker_pids: Vec<String> = cli
        .broker_pid
        .iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let common = Common {
        ep,
        sub_eps: eps,
        broker_pids,
        redis_pid: cli.redis_pid.clone(),
        batch: cli.batch,
        batch_pause: Duration::from_millis(cli.batch_pause_ms),
        payload: cli.payload.max(40),
        drain_timeout: Duration::from_secs_f64(cli.drain_timeout.max(0.1)),
        client_ping: Duration::from_secs_f64(cli.client_ping.max(0.1)),
    };
    let mut r = Report::default();
    r.set("target", cli.target.name());
    r.set("scenario", cli.scenario.name());
    r.set(
        "label",
        cli.label
            .clone()
            .unwrap_or_else(|| cli.scenario.name().into()),
    );
    r.set("url", common.ep.url.clone());
    if common.sub_eps.len() > 1 {
        // Only with several brokers, so that single-broker lines stay as they were.
        r.set("nodes", common.sub_eps.len());
        r.set(
            "sub_urls",
            serde_json::json!(common
                .sub_eps
                .iter()
                .map(|e| e.url.clone())
                .collect::<Vec<_>>()),
        );
    }
    if common.broker_pids.len() > 1 {
        r.set("broker_pids", common.broker_pids.len());
    }
    if nofile < 1024 {
        eprintln!("loadgen: warning: open-file limit is only {nofile}");
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        match cli.scenario {
            Scenario::Fanout {
                subs,
                messages,
                rate,
                window,
            } => {
                let plan = RoomsPlan {
                    rooms: 1,
                    per_room: subs,
                    messages,
                    rate,
                    window,
                    prefix: "fanout".into(),
                };
                r.set("subs", subs);
                scenario::rooms(&common, &plan, &mut r).await;
            }
            Scenario::Rooms {
                rooms,
                per_room,
                messages,
                rate,
                window,
            } => {
                let plan = RoomsPlan {
                    rooms: rooms.max(1),
                    per_room,
                    messages,
                    rate,
                    window,
                    prefix: "rooms".into(),
                };
                scenario::rooms(&common, &plan, &mut r).await;
            }
            Scenario::Idle { conns, rooms, hold } => {
                let hold = Duration::from_secs_f64(hold.max(0.0));
                scenario::idle(&common, conns, rooms, hold, &mut r).await;
            }
            Scenario::Churn {
                concurrency,
                count,
                duration,
                rooms,
            } => {
                let duration = Duration::from_secs_f64(duration.max(0.1));
                scenario::churn(&common, concurrency, count, duration, rooms, &mut r).await;
            }
            Scenario::Table { .. } => unreachable!("handled above"),
        }
    });
    // Dropping the runtime closes every socket that is still open.
    drop(local);
    drop(rt);

    println!("{}", r.human());
    let line = r.json_line();
    println!("{line}");
    if let Some(path) = &cli.json_out {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            eprintln!("loadgen: cannot append to {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Scenario};

    #[test]
    fn several_urls_and_pids() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--broker-pid",
            "10,11",
            "--url",
            "ws://127.0.0.1:2/ws",
            "--broker-pid",
            "12",
            "--redis-pid",
            "13",
            "fanout",
            "--subs",
            "3",
        ])
        .unwrap();
        assert_eq!(cli.url, ["ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws"]);
        assert_eq!(cli.broker_pid, ["10", "11", "12"]);
        assert_eq!(cli.redis_pid.as_deref(), Some("13"));
        assert!(matches!(cli.scenario, Scenario::Fanout { subs: 3, .. }));

        // After the scenario name works too.
        let after = Cli::try_parse_from([
            "loadgen",
            "fanout",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--url",
            "ws://127.0.0.1:2/ws",
        ])
        .unwrap();
        assert_eq!(after.url.len(), 2);

        let one = Cli::try_parse_from(["loadgen", "--broker-pid", "7", "idle"]).unwrap();
        assert!(one.url.is_empty());
        assert_eq!(one.broker_pid, ["7"]);
        assert_eq!(one.redis_pid, None);
    }
}
