//! The command-line client of the REST API: `bora workflow ...`,
//! `bora task ...` and `bora server ...` (SPEC 1). It speaks only HTTP (reqwest) to a running
//! dispatcher — never the store, never the broker — so it works against any
//! bora that a URL and a token reach.
//!
//! - [`commands`]: the clap verbs and what each one does.
//! - [`http`]: the HTTP client and the error a failed request becomes.
//! - [`render`]: tables and the "why is it waiting?" explanation.
//! - [`graph`]: Graphviz DOT and Mermaid renderings of a workflow.
//! - [`sse`]: the events of a `text/event-stream` body (parsed by `sse-stream`).
//! - [`watch`]: live progress of a workflow from its event stream.
//! - [`follow`]: a running task's live output, as it is printed.
//!
//! Exit codes scripts can rely on: 0 success; 1 the request failed (the
//! server's error code and message are printed) or the server is
//! unreachable; 2 bad usage (from clap); 3 `workflow watch` saw the workflow
//! end failed, cancelled or deleted (or `task output --follow` the task end
//! other than succeeded).

mod commands;
mod follow;
mod graph;
mod http;
mod render;
mod sse;
mod watch;

pub use commands::{ServerArgs, TaskArgs, WorkflowArgs, run_server, run_task, run_workflow};
pub use graph::{dot, mermaid};
pub use http::{Client, ClientError};
pub use sse::{SseError, SseEvent, sse_events};

/// What a client command ends with, for the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 3: a watched workflow ended failed, cancelled or deleted.
    WorkflowUnsuccessful,
}

impl Outcome {
    /// The process exit code scripts see: 0 or 3.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::WorkflowUnsuccessful => 3,
        }
    }
}
