//! Every integration test of the broker, in one test binary. Each test binary links the
//! whole broker and its dependencies (about 100 MB in a debug build): one binary per file
//! meant 27 links, 27 copies on disk and `support` compiled into 23 of them.
//! The files stay as they were, each a module here; run one with
//! `cargo test --test integration <module>::` (e.g. `delivery::`).
//!
//! All of them now run in one process, concurrently: a test must not change anything
//! process-wide (environment variables, signal dispositions, the current directory) or
//! assert on what the test process as a whole holds (its threads, descriptors, memory);
//! signals go to broker child processes (`support::process`), never to this one.

mod support;

// `tests/asap/` holds the Python drivers of `asap_python`, not modules: `mod asap;` is
// `tests/asap.rs` (a `tests/asap/mod.rs` would make the two ambiguous).
mod asap;
mod asap_python;
mod auth;
mod bridge;
mod cli;
mod client_restart;
mod compression;
mod connection_caps;
mod console;
mod core;
mod delivery;
mod embed;
mod endpoints;
mod fanout;
mod handlers;
mod http_api;
mod jwks;
mod lifecycle;
mod limits;
mod metrics;
mod scale_out;
mod security;
mod tasks;
mod tls;
mod webhook_durability;
mod webhook_signing;
mod webhooks;
mod write_deadline;
