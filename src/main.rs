//! The `switchboard` binary: `serve` (default), `check-config`, `genconfig`, `token`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// jemalloc, with background threads that return freed memory to the OS within seconds
/// (dirty and muzzy pages decay over 10 s each), also while the broker is idle. glibc's
/// malloc kept the memory of retired rooms (docs/SECURITY.md, "Memory under attack").
/// The `system-allocator` feature keeps glibc's malloc, for heap profilers that hook it.
#[cfg(all(unix, not(target_env = "musl"), not(feature = "system-allocator")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use switchboard::config::Config;
use switchboard::{auth, server, Broker};

#[derive(Parser)]
#[command(name = "switchboard", version, about = "Real-time message broker")]
struct Cli {
    /// TOML config file (also SWITCHBOARD_CONFIG). Without one: dev mode on 127.0.0.1:8000.
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default).
    Serve,
    /// Validate a config file (FILE or --config) and what the broker needs from it: key
    /// files readable, the webhook outbox openable. Nothing is changed.
    CheckConfig {
        /// TOML config file.
        file: Option<PathBuf>,
    },
    /// Write a working config file: every key commented with its default, and a freshly
    /// generated auth.hs256_secret and API key. Without FILE: to standard output.
    Genconfig {
        /// Where to write it; an existing file is not overwritten.
        file: Option<PathBuf>,
    },
    /// Print an HS256 token signed with the configured secret (dev mode: the dev secret).
    Token {
        /// User id (`sub`); not empty.
        #[arg(long, value_parser = non_empty)]
        sub: String,
        /// Room pattern the user may join, e.g. 'conversation:*'; repeat for more. None: a
        /// token like an identity provider's, for endpoints with access = "authenticated".
        #[arg(long = "room")]
        rooms: Vec<String>,
        /// Room pattern the user may publish to; repeat for more. Default: the --room patterns.
        #[arg(long = "publish")]
        publish: Vec<String>,
        /// Lifetime, e.g. 1h, 30m.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Add the claim "admin": true: the token may call the HTTP API and log into the
        /// web console (with --room '*' it may also watch every room there).
        #[arg(long)]
        admin: bool,
    },
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(value.to_owned())
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config),
        Command::CheckConfig { file } => check_config(file.or(cli.config)),
        Command::Genconfig { file } => genconfig(file),
        Command::Token {
            sub,
            rooms,
            publish,
            ttl,
            admin,
        } => token(cli.config, &sub, rooms, publish, ttl, admin),
    }
}

fn check_config(file: Option<PathBuf>) -> ExitCode {
    let Some(file) = file else {
        eprintln!("check-config: name the file: `switchboard check-config FILE`");
        return ExitCode::from(2);
    };
    match Config::load(Some(&file)).and_then(|config| Broker::preflight(&config).map(|()| config)) {
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
    }
}

fn genconfig(file: Option<PathBuf>) -> ExitCode {
    let text = switchboard::config::generate_config_text();
    let Some(file) = file else {
        print!("{text}");
        return ExitCode::SUCCESS;
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    match written {
        Ok(()) => {
            eprintln!(
                "wrote {}: run it with `switchboard --config {}`",
                file.display(),
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!("{} exists; not overwriting it", file.display());
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("cannot write {}: {err}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn token(
    config: Option<PathBuf>,
    sub: &str,
    rooms: Vec<String>,
    publish: Vec<String>,
    ttl: Duration,
    admin: bool,
) -> ExitCode {
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
    let minted = if admin {
        auth::mint_hs256_admin(&config.auth.hs256_secret, sub, rooms, publish, ttl)
    } else {
        auth::mint_hs256(&config.auth.hs256_secret, sub, rooms, publish, ttl)
    };
    match minted {
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
    // Read before anything starts: a certificate that cannot be used stops the start here.
    let tls = match switchboard::tls::TlsCertificate::from_config(&config.server) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("switchboard: {err}");
            return ExitCode::from(2);
        }
    };
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
        let bound = listener.local_addr().unwrap_or(bind);
        log::info!("{}", server::banner(broker.config(), bound));
        if let Some(certificate) = &tls {
            log::info!(
                "TLS certificate {}: {}",
                certificate.cert_path().display(),
                certificate.info()
            );
            reload_on_sighup(certificate.clone())?;
        }
        let report =
            server::serve_with_tls(broker, listener, tls, server::termination_signal()).await?;
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

/// SIGHUP reads the TLS certificate and key again (`TlsCertificate::reload`, which logs
/// the outcome): new connections get the new certificate, open ones keep theirs, and a pair
/// that does not load leaves the old one in use. The handler is in place when this returns,
/// before the broker serves. Without TLS, SIGHUP keeps its default action.
#[cfg(unix)]
fn reload_on_sighup(
    certificate: std::sync::Arc<switchboard::tls::TlsCertificate>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    actix_rt::spawn(async move {
        while hangups.recv().await.is_some() {
            log::info!(
                "SIGHUP: reloading the TLS certificate from {} and {}",
                certificate.cert_path().display(),
                certificate.key_path().display()
            );
            let _ = certificate.reload();
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_sighup(_: std::sync::Arc<switchboard::tls::TlsCertificate>) -> std::io::Result<()> {
    Ok(())
}
