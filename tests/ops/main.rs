//! The operator's side against real parts: the `bora` binary's client verbs
//! against a running dispatcher, the event stream with resume, the OpenAPI
//! document (validated and driven by schemathesis), metrics, JSON logs, and
//! the compose file. The dispatcher harness is the one of `tests/api`.

#[path = "../api/helpers.rs"]
mod helpers;

mod cli;
mod events;
mod process;
mod secrets;
mod service;
