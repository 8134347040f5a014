//! The guest worker (`bora worker --server-id ID`): consumes its server's task
//! queue, runs each task (script, hook or built-in), and publishes `started`,
//! heartbeats and the result to the dispatcher's reply exchange.
//!
//! # Layout
//! - [`broker`]: connection, topology checks, consumers, reconnect with backoff;
//!   the user name of the broker URL.
//! - [`publisher`]: replies with confirms and `user_id`; results kept across reconnects.
//! - [`handler`]: the life of one task delivery (admit, ledger, started, ack, run, report).
//! - [`runner`]: which runner a group gets, and how its output becomes a result.
//! - [`process`]: one process group: spawn, capture, timeout, cancel, kill.
//! - [`capture`]: capped head-and-tail capture with whole-stream counts and digests.
//! - [`scrub`]: the task's secret values replaced by `***` in what it reports.
//! - [`registry`]: the attempts held in memory, early cancels, recent finishes.
//! - [`ledger`]: the on-disk at-most-once ledger.
//!
//! Shutdown (the token `cli` cancels on SIGTERM): stop consuming, requeue
//! prefetched tasks, let running ones finish within `worker.shutdown_grace_s`,
//! then kill and report them, publish what is kept, close, return `Ok`.

mod broker;
mod capture;
mod fit;
mod handler;
mod ledger;
mod live;
mod process;
mod publisher;
mod registry;
mod runner;
pub mod scrub;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AmqpSettings, SecretUrl, Settings};
use crate::domain::ServerId;
use crate::protocol::{IDLE_HEARTBEAT_PREFIX, RpcReply};
use broker::broker_user;
use ledger::Ledger;
use publisher::Publisher;
use registry::Registry;
use runner::RunnerConfig;

/// How long kept results may take to reach the broker at shutdown.
const FINAL_FLUSH: Duration = Duration::from_secs(10);

/// What every part of the worker shares. Built once in [`run`].
pub(crate) struct Worker {
    server_id: ServerId,
    amqp: AmqpSettings,
    /// `worker.amqp_url`, else `amqp.url`.
    amqp_url: SecretUrl,
    /// `worker.concurrency`: slots, and the task channel's prefetch.
    concurrency: u16,
    heartbeat: Duration,
    runners: RunnerConfig,
    registry: Registry,
    ledger: Ledger,
    publisher: Publisher,
    /// One permit per task slot.
    permits: Arc<Semaphore>,
    /// Every task handler, so shutdown can wait for them.
    tasks: TaskTracker,
    /// SIGTERM: stop taking tasks.
    shutdown: CancellationToken,
    /// The shutdown grace is over: kill what still runs.
    kill_all: CancellationToken,
    /// Undecodable messages and tasks for other servers, since start.
    bad_messages: AtomicU64,
    /// Whether to redeclare existing queues to check their type against
    /// `amqp.queue_type`: not with the server's registered broker user, which
    /// may configure nothing, and no more after the broker refused it once
    /// (each refusal is an error line of lapin's).
    check_queues: AtomicBool,
}

/// Runs the worker of `server_id` until `shutdown` fires and its tasks are
/// finished (or killed after `worker.shutdown_grace_s`) and reported.
///
/// # Errors
/// A broker URL without a usable user name. Broker outages are not errors: the
/// worker reconnects until shut down.
pub async fn run(
    settings: Settings,
    server_id: ServerId,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let amqp_url = settings.worker_amqp_url().clone();
    let user_id = broker_user(&amqp_url)?;
    let registered_user = user_id == crate::domain::broker_user(&server_id);
    let ws = &settings.worker;
    let runners = RunnerConfig {
        hooks_dir: ws.hooks_dir.clone(),
        max_output_bytes: ws.max_output_bytes,
        scratch_root: scratch_root(&ws.state_dir),
    };
    let ledger = Ledger::new(ws.state_dir.clone(), &server_id);
    if let Err(e) = ledger.open().await {
        tracing::warn!(error = %e, "at_most_once tasks will fail until the ledger is writable");
    }
    let worker = Arc::new(Worker {
        publisher: Publisher::new(settings.amqp.reply_queue.clone(), user_id),
        server_id,
        amqp: settings.amqp.clone(),
        amqp_url,
        concurrency: ws.concurrency,
        heartbeat: Duration::from_secs(ws.heartbeat_s),
        runners,
        registry: Registry::default(),
        ledger,
        permits: Arc::new(Semaphore::new(usize::from(ws.concurrency))),
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
        kill_all: CancellationToken::new(),
        bad_messages: AtomicU64::new(0),
        check_queues: AtomicBool::new(!registered_user),
    });
    tracing::info!(
        server_id = %worker.server_id,
        broker = %worker.amqp_url,
        concurrency = worker.concurrency,
        hooks_dir = %worker.runners.hooks_dir.display(),
        "worker starting"
    );

    let stop_connection = CancellationToken::new();
    let connection = tokio::spawn(broker::supervise(worker.clone(), stop_connection.clone()));
    let idle = tokio::spawn(idle_heartbeats(worker.clone()));

    shutdown.cancelled().await;
    tracing::info!(
        grace_s = settings.worker.shutdown_grace_s,
        "shutting down: finishing running tasks"
    );
    worker.tasks.close();
    let grace = Duration::from_secs(settings.worker.shutdown_grace_s);
    if tokio::time::timeout(grace, worker.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace over: killing running tasks");
        worker.kill_all.cancel();
        worker.tasks.wait().await;
    }
    let flushed = tokio::time::timeout(FINAL_FLUSH, async {
        while worker.publisher.kept() > 0 {
            if worker.publisher.flush().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
    .await;
    if flushed.is_err() {
        tracing::error!(
            kept = worker.publisher.kept(),
            "results not published before exit; the dispatcher will see the attempts as lost"
        );
    }
    idle.abort();
    stop_connection.cancel();
    let _ = connection.await;
    tracing::info!("worker stopped");
    Ok(())
}

/// `<state_dir>/scratch` when it can be made (not /tmp: it may be `noexec`),
/// else the system temporary directory.
fn scratch_root(state_dir: &std::path::Path) -> PathBuf {
    let dir = state_dir.join("scratch");
    match std::fs::create_dir_all(&dir) {
        Ok(()) => dir,
        Err(e) => {
            let tmp = std::env::temp_dir();
            tracing::warn!(
                error = %e,
                dir = %dir.display(),
                fallback = %tmp.display(),
                "cannot create the scratch directory"
            );
            tmp
        }
    }
}

/// `server.<id>` heartbeats every `worker.heartbeat_s` while the worker holds
/// no task and no unpublished result.
async fn idle_heartbeats(worker: Arc<Worker>) {
    let msg_id = format!("{IDLE_HEARTBEAT_PREFIX}{}", worker.server_id);
    let mut tick = tokio::time::interval(worker.heartbeat);
    loop {
        tick.tick().await;
        if worker.registry.is_empty() && worker.publisher.kept() == 0 {
            let _ = worker
                .publisher
                .publish(&RpcReply::heartbeat(&msg_id))
                .await;
        }
    }
}
