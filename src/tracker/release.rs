//! The moves of one task inside a transaction: dispatch (hand an attempt to
//! the outbox), finish (end it and release its dependents), cancel, and the
//! release walk that skips or dispatches dependents.

use std::collections::HashMap;

use crate::domain::{Delivery, TaskId, TaskState};
use crate::protocol::TaskResult;
use crate::store::{OutboxKind, StoreError, TaskRow, WriteTx};

/// Moves `task` to `to` and logs the event, refusing illegal moves (a bug,
/// so it is a store-level corruption error rather than a client error). The
/// caller writes the row.
async fn transition(
    tx: &mut WriteTx,
    task: &mut TaskRow,
    to: TaskState,
    now: i64,
) -> Result<(), StoreError> {
    task.state
        .check_transition(to)
        .map_err(|e| StoreError::Corrupt(format!("task {}: {e}", task.id)))?;
    task.state = to;
    task.updated_at = now;
    tx.task_event(task, now).await
}

/// [`evaluate`], then the release walk if the task was skipped.
pub(super) async fn evaluate_and_release(
    tx: &mut WriteTx,
    task: &mut TaskRow,
    now: i64,
) -> Result<(), StoreError> {
    if evaluate(tx, task, now).await? {
        release_dependents(tx, task, now).await?;
    }
    Ok(())
}

/// Decides what a task that is waiting for its dependencies does now: stays,
/// is dispatched (all satisfied), or is skipped (one ended badly and its
/// policy is `skip`). Tasks already handed to the broker are left alone.
/// Returns whether the task was skipped (its dependents are the caller's).
async fn evaluate(tx: &mut WriteTx, task: &mut TaskRow, now: i64) -> Result<bool, StoreError> {
    if task.state != TaskState::Waiting || task.attempt != 0 {
        return Ok(false);
    }
    let states = tx.dependency_states(task.id).await?;
    match evaluate_new(task, &states, now)? {
        Start::Wait => Ok(false),
        Start::Skip => {
            tx.task_event(task, now).await?;
            tx.update_task(task).await?;
            Ok(true)
        }
        Start::Dispatch => {
            tx.update_task(task).await?;
            tx.enqueue(OutboxKind::Task, task, now, now).await?;
            Ok(false)
        }
    }
}

/// What a task of a new batch does at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// All dependencies satisfied: attempt 1 goes to the outbox.
    Dispatch,
    /// A dependency ended badly and the policy is `skip`.
    Skip,
    /// Some dependency has not ended.
    Wait,
}

/// [`evaluate`] for a task that is not in the store yet, given its
/// dependencies' states: the same rule, applied to the row in memory (the
/// caller inserts the row as it ends up, logs the events and queues the
/// message), so a batch of new tasks costs a few statements, not a few per
/// task.
pub(super) fn evaluate_new(
    task: &mut TaskRow,
    dependencies: &[TaskState],
    now: i64,
) -> Result<Start, StoreError> {
    let mut all_satisfied = true;
    for s in dependencies {
        match s.satisfies(task.on_dependency_failure) {
            Some(true) => {}
            Some(false) => {
                check(task, TaskState::Skipped)?;
                task.state = TaskState::Skipped;
                task.updated_at = now;
                task.finished_at = Some(now);
                return Ok(Start::Skip);
            }
            None => all_satisfied = false,
        }
    }
    if !all_satisfied {
        return Ok(Start::Wait);
    }
    task.attempt += 1;
    task.updated_at = now;
    Ok(Start::Dispatch)
}

fn check(task: &TaskRow, to: TaskState) -> Result<(), StoreError> {
    task.state
        .check_transition(to)
        .map_err(|e| StoreError::Corrupt(format!("task {}: {e}", task.id)))
}

/// Hands the next attempt to the outbox, due after `delay_s`. The task stays
/// `waiting` until the broker confirms the publish.
pub(super) async fn dispatch(
    tx: &mut WriteTx,
    task: &mut TaskRow,
    now: i64,
    delay_s: i64,
) -> Result<(), StoreError> {
    task.attempt += 1;
    if task.state != TaskState::Waiting {
        transition(tx, task, TaskState::Waiting, now).await?;
    }
    task.queued_at = None;
    task.started_at = None;
    task.last_heartbeat_at = None;
    task.updated_at = now;
    tx.update_task(task).await?;
    tx.enqueue(OutboxKind::Task, task, now + delay_s * 1_000_000, now)
        .await
}

/// The worker reported that the current attempt runs (a heartbeat): moves
/// the row in memory, and returns whether the task moved to `running` (an
/// event is due). The caller writes the row.
pub(super) fn mark_running_in_memory(task: &mut TaskRow, now: i64) -> Result<bool, StoreError> {
    let moved = matches!(task.state, TaskState::Waiting | TaskState::Queued);
    if moved {
        check(task, TaskState::Running)?;
        task.state = TaskState::Running;
        task.queued_at.get_or_insert(now);
        task.started_at = Some(now);
    }
    task.last_heartbeat_at = Some(now);
    task.updated_at = now;
    Ok(moved)
}

/// How an attempt ends.
pub(super) enum End {
    /// A new attempt, after this many seconds.
    Retry(i64),
    /// The task ends in this state.
    Final(TaskState),
}

/// Decides how the current attempt ends given its result, and sets the
/// result, the times and the failure count on the row in memory. Nothing
/// is written and the state is not moved yet.
pub(super) fn decide_end(
    task: &mut TaskRow,
    result: &TaskResult,
    now: i64,
    may_retry: bool,
) -> Result<End, StoreError> {
    let declared = task.outputs()?;
    let end = if result.succeeded(&declared) {
        TaskState::Succeeded
    } else if result.timed_out {
        TaskState::TimedOut
    } else {
        TaskState::Failed
    };
    task.result =
        Some(serde_json::to_string(result).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    if task.state != TaskState::Running {
        // A result without a started report (instant runners, oslo servers).
        task.queued_at.get_or_insert(now);
        task.started_at.get_or_insert(now);
    }
    if end != TaskState::Succeeded && may_retry && task.failures < task.retries {
        task.failures += 1;
        return Ok(End::Retry(task.retry_delay_s));
    }
    Ok(End::Final(end))
}

/// Moves the row in memory to its final state `end` (the caller writes it
/// and logs the event).
pub(super) fn end_in_memory(
    task: &mut TaskRow,
    end: TaskState,
    now: i64,
) -> Result<(), StoreError> {
    check(task, end)?;
    task.state = end;
    task.updated_at = now;
    task.finished_at = Some(now);
    Ok(())
}

/// Records the final result of the current attempt: the task ends, or a new
/// attempt is scheduled while `retries` allow, and its dependents are
/// released.
pub(super) async fn finish(
    tx: &mut WriteTx,
    task: &mut TaskRow,
    result: &TaskResult,
    now: i64,
) -> Result<(), StoreError> {
    end_attempt(tx, task, result, now, true).await
}

/// Ends the current attempt: retried while `may_retry` and `retries` allow,
/// else terminal, and then its dependents released.
async fn end_attempt(
    tx: &mut WriteTx,
    task: &mut TaskRow,
    result: &TaskResult,
    now: i64,
    may_retry: bool,
) -> Result<(), StoreError> {
    let end = match decide_end(task, result, now, may_retry)? {
        End::Retry(delay) => return dispatch(tx, task, now, delay).await,
        End::Final(end) => end,
    };
    transition(tx, task, end, now).await?;
    task.finished_at = Some(now);
    tx.update_task(task).await?;
    release_dependents(tx, task, now).await
}

/// Cancels a task that has not ended. Workers that may hold the current
/// attempt are told; a message not yet confirmed is dropped from the outbox.
pub(super) async fn cancel(
    tx: &mut WriteTx,
    task: &mut TaskRow,
    now: i64,
) -> Result<(), StoreError> {
    transition(tx, task, TaskState::Cancelled, now).await?;
    task.finished_at = Some(now);
    tx.update_task(task).await?;
    if task.attempt > 0 {
        tx.drop_pending_publish(task.id).await?;
        // The publish may be in flight right now: always tell the worker.
        tx.enqueue(OutboxKind::Cancel, task, now, now).await?;
    }
    Ok(())
}

/// After `ended` reached a terminal state: skip or dispatch each dependent
/// that was waiting for it, and so on down the graph ([`walk`], then its
/// rows, events and messages written).
pub(super) async fn release_dependents(
    tx: &mut WriteTx,
    ended: &TaskRow,
    now: i64,
) -> Result<(), StoreError> {
    let mut changes = Changes::default();
    walk(tx, vec![ended.id], &mut changes, now).await?;
    let rows: Vec<&TaskRow> = changes.rows.values().collect();
    tx.update_tasks(&rows).await?;
    let events: Vec<&TaskRow> = changes.events.iter().collect();
    tx.task_events(&events, now).await?;
    let dispatched: Vec<&TaskRow> = changes
        .dispatched
        .iter()
        .filter_map(|id| changes.rows.get(id))
        .collect();
    tx.enqueue_many(OutboxKind::Task, &dispatched, now, now)
        .await
}

/// Task rows changed in memory and not written yet (the latest version of
/// each), the events they owe in order, and the tasks whose first attempt
/// a release walk dispatched.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub(super) rows: HashMap<TaskId, TaskRow>,
    pub(super) events: Vec<TaskRow>,
    pub(super) dispatched: Vec<TaskId>,
}

impl Changes {
    /// Keeps `task`, with an event if it changed state.
    pub(super) fn keep(&mut self, task: &TaskRow, event: bool) {
        if event {
            self.events.push(task.clone());
        }
        self.rows.insert(task.id, task.clone());
    }
}

/// The release walk, in memory: from the tasks in `ended` (just ended), a
/// dependent whose dependencies are now all satisfied gets its first
/// attempt, one that must be skipped is skipped and its own dependents are
/// walked next. States of tasks in `changes` are taken from there, so
/// nothing needs writing before the walk: one query per level of skips.
pub(super) async fn walk(
    tx: &mut WriteTx,
    mut frontier: Vec<TaskId>,
    changes: &mut Changes,
    now: i64,
) -> Result<(), StoreError> {
    while !frontier.is_empty() {
        let found = tx.dependents_many(&frontier).await?;
        frontier.clear();
        for (row, dependencies) in found {
            let mut task = changes.rows.get(&row.id).cloned().unwrap_or(row);
            if task.state != TaskState::Waiting || task.attempt != 0 {
                continue;
            }
            let states: Vec<TaskState> = dependencies
                .iter()
                .map(|(id, state)| changes.rows.get(id).map_or(*state, |t| t.state))
                .collect();
            match evaluate_new(&mut task, &states, now)? {
                Start::Wait => {}
                Start::Skip => {
                    changes.keep(&task, true);
                    frontier.push(task.id);
                }
                Start::Dispatch => {
                    changes.keep(&task, false);
                    changes.dispatched.push(task.id);
                }
            }
        }
    }
    Ok(())
}

/// The worker of the current attempt went silent after acking it. An
/// `at_least_once` task gets a new attempt (not counted against `retries`,
/// at most `max_redeliveries` times); an `at_most_once` task fails with
/// `worker lost`, since running it again could run it twice. The old attempt
/// is cancelled in case its worker is alive but cut off.
pub(super) async fn lose(
    tx: &mut WriteTx,
    task: &mut TaskRow,
    max_redeliveries: u32,
    silence_s: u64,
    now: i64,
) -> Result<(), StoreError> {
    tx.enqueue(OutboxKind::Cancel, task, now, now).await?;
    if task.delivery == Delivery::AtLeastOnce && task.redeliveries < i64::from(max_redeliveries) {
        task.redeliveries += 1;
        return dispatch(tx, task, now, 0).await;
    }
    let message = if task.delivery == Delivery::AtMostOnce {
        format!("worker lost: no heartbeat for {silence_s} s (at_most_once: not run again)")
    } else {
        format!(
            "worker lost: no heartbeat for {silence_s} s, after {} redeliveries",
            task.redeliveries
        )
    };
    let result = TaskResult::error(task.attempt as u32, message);
    // An at_most_once attempt may have run: never start it again.
    let may_retry = task.delivery == Delivery::AtLeastOnce;
    end_attempt(tx, task, &result, now, may_retry).await
}

/// The current attempt got no result within `timeout_s` of its publish: it
/// ends `timed_out` (or is retried while `retries` allow) and its worker is
/// told to stop.
pub(super) async fn expire(
    tx: &mut WriteTx,
    task: &mut TaskRow,
    now: i64,
) -> Result<(), StoreError> {
    tx.enqueue(OutboxKind::Cancel, task, now, now).await?;
    let mut result = TaskResult::error(
        task.attempt as u32,
        format!(
            "timed out: no result within {} s of publish",
            task.timeout_s
        ),
    );
    result.timed_out = true;
    finish(tx, task, &result, now).await
}
