//! Every integration test of the client, in one test binary. Each test binary links the
//! client, a whole broker (they start brokers in-process) and both their dependencies: one
//! file per binary meant five links, five copies on disk and `support` compiled five times.
//! The files stay as they were, each a module here; run one with
//! `cargo test -p switchboard-client --test integration <module>::` (e.g. `chaos::`).
//!
//! All of them now run in one process, concurrently: a test must not change anything
//! process-wide (environment variables, signal dispositions, the current directory) or
//! assert on what the test process as a whole holds (its threads, descriptors, memory).

mod support;

mod asap;
mod chaos;
mod lifecycle;
mod pool;
mod requests;
