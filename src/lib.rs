//! bora: a message-queue-driven task dispatcher for configuring servers.
//!
//! # Layout
//! - [`config`]: the layered `Settings` tree.
//! - [`telemetry`]: the tracing subscriber.
//! - [`domain`]: ids, names, the task state machine, validated specs.
//! - [`protocol`]: oslo.messaging wire types (task calls, replies, results).
//! - [`client`]: the CLI client of the REST API (`bora workflow|task ...`).
//!
//! `ARCHITECTURE.md` at the repository root draws how a task flows through them.

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
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod worker;
