//! bora: a message-queue-driven task dispatcher for configuring servers.
//!
//! One binary holds every process (`bora serve`, `bora worker`, the client
//! verbs and `bora bench`); this library does their work, `main.rs` only
//! picks the runtime and calls [`cli::run`].
//!
//! # Layout
//! The dispatcher in four layers, inside out:
//! - [`domain`]: what bora's words mean, as values in memory: ids, the task
//!   state machine, the task entity, validated specs and the graph rules.
//! - [`store`]: the only authority on state and the only SQL (SQLite or
//!   PostgreSQL), one file per table.
//! - [`app`]: the use cases, one per file, each one transaction written
//!   through the unit of work; the read models and `AppError` both APIs share.
//! - the edges: [`api`] (REST and `/openapi.json`), [`rpc`] (the oslo RPC
//!   API), [`serve`] (the dispatcher process: wiring, outbox relay, result
//!   consumer, timeout scanner, shutdown) and [`registration`] (registered
//!   servers' broker users, permissions and queues).
//!
//! Around them:
//! - [`protocol`]: every byte on the wire: the oslo envelope, task calls,
//!   cancel casts, replies, results and notifications.
//! - [`broker`]: the dispatcher's AMQP: pool, topology, confirming
//!   publisher, reply consumer, RPC endpoint, management API, the reconnect loop.
//! - [`worker`]: the guest daemon (`bora worker`), the only part that runs
//!   task processes.
//! - [`client`]: the CLI client of the REST API (`bora workflow|task|server ...`).
//! - [`bench`](mod@bench): `bora bench`, the end-to-end benchmark in a fresh vhost.
//! - [`cli`]: argument parsing, settings and logging set-up, and the hand-over
//!   to the process each command runs.
//! - [`config`]: the layered `Settings` tree.
//! - [`seal`]: the store's secret key and the AEAD that seals secret values
//!   at rest.
//! - [`telemetry`]: the tracing subscriber and the Prometheus recorder.
//! - [`backoff`]: jittered exponential backoff for every reconnect loop.
//!
//! `ARCHITECTURE.md` at the repository root draws how a task flows through
//! them and states the rules between them that `tests/architecture.rs` checks.

// Library-only lints (the rest are in Cargo.toml's `[lints]`): the test
// crates under `tests/` unwrap in their helpers and have unsafe blocks without
// a SAFETY comment, and Cargo's `[lints]` cannot tell targets apart. Unit
// tests may unwrap (`allow-unwrap-in-tests` in `clippy.toml`).
#![warn(clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod app;
pub mod backoff;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod protocol;
pub mod registration;
pub mod rpc;
pub mod seal;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod worker;
