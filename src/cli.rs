//! The command line: `bora serve`, `bora worker`, `bora bench`, and (later) the REST client
//! verbs. Parses arguments, loads settings, installs logging and the crypto
//! provider, and hands over to the library. Nothing else lives here.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{LogFormat, Settings};
use crate::domain::ServerId;

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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Human,
    Json,
}

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
    /// Benchmark bora end to end against the configured broker (in a fresh vhost).
    Bench(crate::bench::BenchArgs),
}

/// Entry point of the binary.
///
/// # Errors
/// Bad configuration, or a component that could not start or failed.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
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
        Command::Serve => crate::serve::run(settings, shutdown).await,
        Command::Worker { server_id } => {
            let id = server_id
                .or_else(|| settings.worker.server_id.clone())
                .context("no server id: pass --server-id or set worker.server_id")?;
            let id = ServerId::parse(&id)
                .map_err(|e| anyhow::anyhow!("invalid server id {id:?}: {e}"))?;
            crate::worker::run(settings, id, shutdown)
                .await
                .context("worker failed")
        }
        Command::Bench(args) => crate::bench::run(settings, args, cli.config, shutdown).await,
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
