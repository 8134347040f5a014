//! The command line: `bora serve`, `bora worker`, `bora bench`, and the REST
//! client verbs (`bora workflow ...`, `bora task ...`, `bora server ...`, in
//! `client`). Parses arguments, loads settings, installs logging, and hands
//! over to the library. Nothing else lives here.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{LogFormat, Settings};
use crate::domain::ServerId;

/// The whole command line: global options and the command.
#[derive(Debug, Parser)]
#[command(
    name = "bora",
    version,
    about = "Message-queue-driven task dispatcher for configuring servers"
)]
pub struct Cli {
    /// Configuration file layered over config/default.toml.
    #[arg(long, global = true, env = "BORA_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,

    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`: `human` or `json`, the [`LogFormat`] of `log.format`
/// as a flag takes it.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[allow(
    missing_docs,
    reason = "clap shows a variant's doc comment in --help; LogFormat documents them"
)]
pub enum LogFormatArg {
    Human,
    Json,
}

/// The process to run: the dispatcher, a worker, a client verb or the bench.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the dispatcher: REST API, publisher, result consumer, state tracker.
    Serve,
    /// Run the guest worker of one server: consume its queue, run tasks, report results.
    Worker {
        /// The server this worker serves (else worker.server_id).
        #[arg(long, env = "BORA_SERVER_ID")]
        server_id: Option<String>,
    },
    /// Manage workflows through the REST API (--url / BORA_URL).
    Workflow(crate::client::WorkflowArgs),
    /// Manage tasks through the REST API (--url / BORA_URL).
    Task(crate::client::TaskArgs),
    /// Register, list and revoke servers through the REST API (--url / BORA_URL).
    Server(crate::client::ServerArgs),
    /// Benchmark bora end to end against the configured broker (in a fresh vhost).
    Bench(crate::bench::BenchArgs),
}

/// Which tokio runtime a command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// One thread: the guest worker (it waits on the broker and on child
    /// processes; a second scheduler thread only adds hand-offs between
    /// threads, on a machine whose CPU belongs to the tasks it runs) and the
    /// client verbs.
    CurrentThread,
    /// A thread per core: the dispatcher and the bench.
    MultiThread,
}

impl Command {
    /// The runtime this command runs on.
    #[must_use]
    pub fn runtime(&self) -> RuntimeKind {
        match self {
            Self::Serve | Self::Bench(_) => RuntimeKind::MultiThread,
            Self::Worker { .. } | Self::Workflow(_) | Self::Task(_) | Self::Server(_) => {
                RuntimeKind::CurrentThread
            }
        }
    }
}

/// Entry point of the binary; returns the process exit code.
///
/// # Errors
/// Bad configuration, a component that could not start or failed, or a
/// client request that failed.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    // The client verbs need no settings and no logging: only a URL.
    match cli.command {
        Command::Workflow(args) => return Ok(crate::client::run_workflow(args).await?.exit_code()),
        Command::Task(args) => return Ok(crate::client::run_task(args).await?.exit_code()),
        Command::Server(args) => return Ok(crate::client::run_server(args).await?.exit_code()),
        Command::Serve | Command::Worker { .. } | Command::Bench(_) => {}
    }
    let settings = Settings::load(cli.config.as_deref()).context("loading configuration")?;
    let format = match cli.log_format {
        Some(LogFormatArg::Human) => LogFormat::Human,
        Some(LogFormatArg::Json) => LogFormat::Json,
        None => settings.log.format,
    };
    // The bench prints its own report; the embedded dispatcher logs only warnings.
    let level = match cli.command {
        Command::Bench(_) => "warn",
        _ => settings.log.level.as_str(),
    };
    crate::telemetry::init(format, level);
    let shutdown = shutdown_on_signal();
    match cli.command {
        Command::Serve => crate::serve::run(settings, shutdown).await.map(|()| 0),
        Command::Workflow(_) | Command::Task(_) | Command::Server(_) => Ok(0),
        Command::Worker { server_id } => {
            let id = server_id
                .or_else(|| settings.worker.server_id.clone())
                .context("no server id: pass --server-id or set worker.server_id")?;
            let id = ServerId::parse(&id)
                .map_err(|e| anyhow::anyhow!("invalid server id {id:?}: {e}"))?;
            crate::worker::run(settings, id, shutdown)
                .await
                .context("worker failed")
                .map(|()| 0)
        }
        Command::Bench(args) => crate::bench::run(settings, args, cli.config, shutdown)
            .await
            .map(|()| 0),
    }
}

/// A token cancelled on the first SIGTERM or SIGINT.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {},
                        _ = term.recv() => {},
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}
