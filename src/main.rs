//! The `switchboard` binary: `serve` (default), `check-config`, `token`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// jemalloc, with background threads that return freed memory to the OS within seconds
/// (dirty and muzzy pages decay over 10 s each), also while the broker is idle. glibc's
/// malloc kept the memory of retired rooms (docs/SECURITY.md, "Memory under attack").
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use switchboard::config::Config;
use switchboard::{auth, server, Broker};

#[derive(Parser)]
#[command(name = "switchboard", version, about = "Real-time message broker")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default). Without --config: dev mode on 127.0.0.1:8000.
    Serve {
        /// TOML config file.
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit.
    CheckConfig {
        /// TOML config file.
        file: PathBuf,
    },
    /// Print an HS256 token signed with the configured secret (dev mode: the dev secret).
    Token {
        /// User id (`sub`).
        #[arg(long)]
        sub: String,
        /// Room pattern the user may join; repeat for more.
        #[arg(long = "room")]
        rooms: Vec<String>,
        /// Room pattern the user may publish to; repeat for more. Default: the --room patterns.
        #[arg(long = "publish")]
        publish: Vec<String>,
        /// Lifetime, e.g. 1h, 30m.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// TOML config file whose auth.hs256_secret signs the token.
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { file } => match Config::load(Some(&file))
            .and_then(|config| Broker::preflight(&config).map(|()| config))
        {
            Ok(config) => {
                println!(
                    "{}: ok (bind {}, algorithms {:?}, anonymous {})",
                    file.display(),
                    config.server.bind,
                    config.auth.algorithms,
                    config.auth.anonymous
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(2)
            }
        },
        Command::Token {
            sub,
            rooms,
            publish,
            ttl,
            config,
        } => {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(2);
                }
            };
            if config.auth.hs256_secret.is_empty() {
                eprintln!("auth.hs256_secret is not set: cannot sign an HS256 token");
                return ExitCode::from(2);
            }
            let publish = (!publish.is_empty()).then_some(publish);
            match auth::mint_hs256(&config.auth.hs256_secret, &sub, rooms, publish, ttl) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("cannot sign token: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("switchboard: {err}");
            return ExitCode::from(2);
        }
    };
    if config.dev_mode {
        log::warn!(
            "DEV MODE (no --config): loopback only, anonymous sessions allowed, every origin \
             allowed, tokens signed with the public dev secret, API key \
             switchboard-dev-api-key. Do not expose this instance."
        );
    }
    let bind = match config.bind_addr() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("switchboard: {err}");
            return ExitCode::from(2);
        }
    };
    let listener = match std::net::TcpListener::bind(bind) {
        Ok(l) => l,
        Err(err) => {
            eprintln!("switchboard: cannot listen on {bind}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = actix_rt::System::new().block_on(async move {
        let broker = Broker::start(config)?;
        log::info!(
            "switchboard listening on ws://{bind}{}",
            broker.config().server.ws_path
        );
        let report = server::serve(broker, listener, server::termination_signal()).await?;
        log::info!(
            "shutdown complete: {} sessions closed, drained: {}",
            report.sessions,
            report.drained
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchboard: {err}");
            ExitCode::FAILURE
        }
    }
}
