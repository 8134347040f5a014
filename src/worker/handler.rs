//! The life of one task delivery: decode, admit, wait for a slot, check the
//! at-most-once ledger, report `started`, ack, run with heartbeats, report the
//! result; or refuse it with an error result; or requeue it at shutdown.
//!
//! The ack comes once the `started` report is confirmed, never at the end, so
//! RabbitMQ's `consumer_timeout` cannot redeliver a long task (SPEC 4). Instant
//! runners (`std.echo`, `std.noop`, a missing runner) send no `started`: their
//! result is published and confirmed first, then the delivery is acked. A
//! result is scrubbed of the task's secrets before it is reported, then cut
//! to fit the dispatcher's reply limit ([`super::fit`]). This module never
//! logs a payload, an input value or a config body.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};

use super::Worker;
use super::broker::SessionCtx;
use super::fit;
use super::live::{self, Live};
use super::process::Stoppers;
use super::registry::{Admission, Ticket};
use super::runner::Runner;
use super::scrub::Scrubber;
use crate::domain::Delivery as DeliveryMode;
use crate::protocol::{OutputChunk, RpcReply, RpcRequest, TaskMessage, TaskResult, task_msg_id};

/// Handles one delivery from the task queue to its end, inside a `task`
/// span: `server_id` from the start, the workflow, task, attempt and group
/// once the message is decoded (an undecodable one leaves them empty).
#[tracing::instrument(
    name = "task",
    skip_all,
    fields(
        server_id = %worker.server_id,
        workflow_id = tracing::field::Empty,
        task_id = tracing::field::Empty,
        attempt = tracing::field::Empty,
        group = tracing::field::Empty,
    )
)]
pub async fn handle(worker: Arc<Worker>, delivery: Delivery, session: SessionCtx) {
    let req = match RpcRequest::decode(&delivery.data) {
        Ok(req) => req,
        Err(e) => return bad_message(&worker, &delivery, None, &e.to_string()).await,
    };
    let task = match TaskMessage::from_call(&req) {
        Ok(task) => task,
        Err(e) => {
            return bad_message(&worker, &delivery, req.msg_id.as_deref(), &e.to_string()).await;
        }
    };
    let span = tracing::Span::current();
    span.record("workflow_id", tracing::field::display(&task.workflow_id));
    span.record("task_id", tracing::field::display(&task.id));
    span.record("attempt", task.attempt);
    span.record("group", tracing::field::display(&task.group));
    let msg_id = task_msg_id(task.id, task.attempt);
    if task.server_id != worker.server_id {
        let why = format!(
            "task for server {} delivered to server {}",
            task.server_id, worker.server_id
        );
        return bad_message(&worker, &delivery, Some(&msg_id), &why).await;
    }
    handle_task(worker, delivery, session, task, msg_id).await;
}

async fn handle_task(
    worker: Arc<Worker>,
    delivery: Delivery,
    session: SessionCtx,
    task: TaskMessage,
    msg_id: String,
) {
    let ticket = match worker.registry.admit((task.id, task.attempt), session.id) {
        Admission::Admitted(t) => t,
        Admission::CancelledEarly => {
            tracing::info!("cancelled before it arrived; dropped without running");
            ack(&delivery).await;
            return;
        }
        Admission::Duplicate(why) => {
            tracing::info!(why, "duplicate delivery dropped");
            ack(&delivery).await;
            return;
        }
    };

    // Wait for a slot; the prefetch window may hold more deliveries than slots.
    let permit = tokio::select! {
        biased;
        () = session.lost.cancelled() => {
            // The broker requeues it; the next connection redelivers it.
            worker.registry.release(&ticket);
            return;
        }
        () = worker.shutdown.cancelled() => {
            requeue(&delivery).await;
            worker.registry.release(&ticket);
            return;
        }
        () = ticket.cancel.cancelled() => {
            tracing::info!("cancelled before it started");
            ack(&delivery).await;
            worker.registry.finish(&ticket);
            return;
        }
        p = worker.permits.clone().acquire_owned() => match p {
            Ok(p) => p,
            Err(_) => return, // the semaphore is never closed
        },
    };
    if session.lost.is_cancelled() {
        worker.registry.release(&ticket);
        return;
    }

    if task.delivery == DeliveryMode::AtMostOnce {
        let refused = match worker.ledger.contains(msg_id.clone()).await {
            Ok(false) => None,
            Ok(true) => Some(
                "at_most_once: attempt already started on this server; not run twice".to_owned(),
            ),
            Err(e) => Some(format!("at_most_once: {e}")),
        };
        if let Some(error) = refused {
            tracing::warn!(error, "at_most_once attempt refused");
            let result = TaskResult::error(task.attempt, error);
            finish_without_process(&worker, &delivery, &ticket, &task, &msg_id, result).await;
            return;
        }
    }

    // The task's secrets, scrubbed from everything it reports.
    let scrubber = Scrubber::of_task(&task);
    let runner = Runner::select(&task.group, &worker.runners.hooks_dir);
    if let Some(result) = runner.instant_result(&task) {
        let result = scrubber.scrub_result(result, &task.outputs);
        if task.delivery == DeliveryMode::AtMostOnce
            && let Err(e) = worker.ledger.record(msg_id.clone()).await
        {
            let result = TaskResult::error(task.attempt, format!("at_most_once: {e}"));
            finish_without_process(&worker, &delivery, &ticket, &task, &msg_id, result).await;
            return;
        }
        if let Runner::Missing(error) = &runner {
            tracing::warn!(error, "no runner");
        }
        finish_without_process(&worker, &delivery, &ticket, &task, &msg_id, result).await;
        return;
    }

    // started, confirmed → ack → ledger → run.
    if let Err(e) = worker
        .publisher
        .publish(&RpcReply::heartbeat(&msg_id))
        .await
    {
        tracing::warn!(error = %e, "started report failed; leaving the delivery to the broker");
        worker.registry.release(&ticket);
        return;
    }
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "ack failed; the broker will redeliver");
        worker.registry.release(&ticket);
        return;
    }
    if !worker.registry.mark_running(&ticket) {
        tracing::info!("a redelivery of this attempt took over; not run here");
        return;
    }
    if task.delivery == DeliveryMode::AtMostOnce
        && let Err(e) = worker.ledger.record(msg_id.clone()).await
    {
        let result = TaskResult::error(task.attempt, format!("at_most_once: {e}"));
        report(&worker, &ticket, &task, &msg_id, result).await;
        return;
    }
    if ticket.cancel.is_cancelled() {
        tracing::info!("cancelled before it started");
        let result = TaskResult::error(task.attempt, "cancelled");
        report(&worker, &ticket, &task, &msg_id, result).await;
        return;
    }
    tracing::info!("task started");

    let heartbeats = tokio::spawn(heartbeat_loop(
        worker.clone(),
        msg_id.clone(),
        worker.heartbeat,
    ));
    let stoppers = Stoppers {
        cancel: ticket.cancel.clone(),
        kill_all: worker.kill_all.clone(),
    };
    // Live output (SPEC 7.5) of a script, when the dispatcher keeps some.
    let live = match (&runner, task.live_output_bytes) {
        (Runner::Script, Some(cap)) if cap > 0 => Some(Arc::new(Live::new(cap))),
        _ => None,
    };
    let live_done = tokio_util::sync::CancellationToken::new();
    let live_sender = live.clone().map(|l| {
        tokio::spawn(live_loop(
            worker.clone(),
            msg_id.clone(),
            l,
            live_done.clone(),
        ))
    });
    let run = runner.run(&task, &worker.runners, &stoppers, &scrubber, live);
    tokio::pin!(run);
    let mut permit = Some(permit);
    let result = tokio::select! {
        r = &mut run => r,
        () = ticket.cancel.cancelled() => {
            // A cancel frees the slot at once, while the group is being killed.
            permit.take();
            run.await
        }
    };
    heartbeats.abort();
    // The last output goes before the result (one channel keeps the order).
    live_done.cancel();
    if let Some(sender) = live_sender
        && tokio::time::timeout(FLUSH_LIMIT, sender).await.is_err()
    {
        tracing::warn!("the last live output was not sent in time; the result has it");
    }
    drop(permit);
    // Streams and output files were scrubbed as they were read; this
    // catches what a hook answered and anything else.
    let result = scrubber.scrub_result(result, &task.outputs);
    tracing::info!(
        exit_code = result.exit_code,
        error = result.error.as_deref(),
        timed_out = result.timed_out,
        "task finished"
    );
    report(&worker, &ticket, &task, &msg_id, result).await;
}

/// Publishes the final result, cut to fit the dispatcher's limit (kept
/// for later if the broker is away), and forgets the attempt.
async fn report(
    worker: &Worker,
    ticket: &Ticket,
    task: &TaskMessage,
    msg_id: &str,
    result: TaskResult,
) {
    let reply = fitted(task, msg_id, result).await;
    worker.publisher.publish_final(reply).await;
    worker.registry.finish(ticket);
}

/// For attempts that start no process: the result first, then the ack, so a
/// crash in between means a redelivery rather than a lost result.
async fn finish_without_process(
    worker: &Worker,
    delivery: &Delivery,
    ticket: &Ticket,
    task: &TaskMessage,
    msg_id: &str,
    result: TaskResult,
) {
    let reply = fitted(task, msg_id, result).await;
    if worker.publisher.publish_final(reply).await {
        ack(delivery).await;
    }
    // Not confirmed: the result is kept and re-published after a reconnect,
    // and a redelivery of this attempt is dropped as finished.
    worker.registry.finish(ticket);
}

/// The final reply of `result`, cut to fit the dispatcher's limit off the
/// async runtime (encoding a large result, maybe more than once, takes a
/// while), in the task's span.
async fn fitted(task: &TaskMessage, msg_id: &str, result: TaskResult) -> RpcReply {
    if fit::surely_fits(task, msg_id, &result) {
        // The common case: far below the limit, nothing to measure.
        return fit::reply_of(msg_id, &result);
    }
    let attempt = result.attempt;
    let (task, id) = (task.clone(), msg_id.to_owned());
    let span = tracing::Span::current();
    let fit = move || span.in_scope(|| fit::final_reply(&task, &id, result));
    match tokio::task::spawn_blocking(fit).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::error!(error = %e, "the result could not be prepared");
            let failed =
                TaskResult::error(attempt, format!("the result could not be prepared: {e}"));
            fit::reply_of(msg_id, &failed)
        }
    }
}

/// How long the last live output may take to go out before the result.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Sends what the task printed since the last tick as non-final replies,
/// every [`live::PERIOD`] while there is something new (a silent task sends
/// nothing), in order: a chunk whose publish failed (a broker away) is
/// sent again from there on the next tick. Once `done`, sends the rest
/// (trying for a few seconds while the broker is away) and returns.
async fn live_loop(worker: Arc<Worker>, msg_id: String, live: Arc<Live>, done: CancellationToken) {
    let mut unsent: VecDeque<OutputChunk> = VecDeque::new();
    let mut tick = tokio::time::interval(live::PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Tries left once the task ended (a broker away: the result has it all).
    let mut flushes = 20;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = done.cancelled() => true,
        };
        unsent.extend(live.take(last));
        while let Some(chunk) = unsent.front() {
            match worker
                .publisher
                .publish(&RpcReply::output(&msg_id, chunk))
                .await
            {
                Ok(()) => {
                    unsent.pop_front();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "live output not published; sent again later");
                    break;
                }
            }
        }
        if last {
            flushes -= 1;
            if unsent.is_empty() || flushes == 0 {
                return;
            }
            // The broker is away: try again shortly.
            tokio::time::sleep(live::PERIOD).await;
        }
    }
}

async fn heartbeat_loop(worker: Arc<Worker>, msg_id: String, period: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tick.tick().await;
        if let Err(e) = worker
            .publisher
            .publish(&RpcReply::heartbeat(&msg_id))
            .await
        {
            tracing::debug!(error = %e, "heartbeat not published");
        }
    }
}

/// A message that is not a task for this server: acked (it would fail the same
/// way again), counted, logged without its payload, and answered with an error
/// result when it names an attempt.
async fn bad_message(worker: &Worker, delivery: &Delivery, msg_id: Option<&str>, why: &str) {
    let count = worker.bad_messages.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(
        error = why,
        bad_messages = count,
        "bad message on the task queue"
    );
    if let Some(msg_id) = msg_id
        && let Ok(crate::protocol::MsgTarget::Attempt { attempt, .. }) =
            crate::protocol::parse_msg_id(msg_id)
    {
        let result = TaskResult::error(attempt, format!("bad task message: {why}"));
        worker
            .publisher
            .publish_final(fit::reply_of(msg_id, &result))
            .await;
    }
    ack(delivery).await;
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        tracing::debug!(error = %e, "ack failed");
    }
}

async fn requeue(delivery: &Delivery) {
    let opts = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    if let Err(e) = delivery.nack(opts).await {
        tracing::debug!(error = %e, "nack failed");
    }
}
