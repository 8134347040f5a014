//! The release: what a task waiting for its dependencies does when one of
//! them ends (or when it is created or changed), applied in memory through
//! the unit of work. [`walk`] is the one release walk: after any end (a
//! result, a cancel, a lost worker, a timeout) it dispatches the dependents
//! whose dependencies are all satisfied, skips those that can no longer
//! run, and goes on down the graph from the skipped ones.
//!
//! A task released with input references (SPEC 7.1) gets their values here,
//! in the transaction that dispatches it, or fails without being published
//! when one cannot be resolved. A secret output's value is copied sealed,
//! its entry flagged `secret` (SPEC 7.4).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::domain::refs::{input_refs, may_hold_refs, output_value};
use crate::domain::secret::SECRET;
use crate::domain::{Readiness, Task, TaskId, TaskState, WorkflowId, readiness};
use crate::protocol::TaskResult;
use crate::store::WriteTx;

use super::group;
use super::unit::UnitOfWork;
use super::{AppConfig, AppError};

/// What the release rule did to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// Its first attempt went out.
    Dispatched,
    /// It ended (skipped, or failed on an input it could not resolve): its
    /// dependents are walked next.
    Ended,
    /// It still waits.
    Waiting,
}

/// Applies the release rule to `task` (which awaits release) given its
/// dependencies' states: dispatches its first attempt (with its input
/// references resolved), skips it, fails it on an unresolvable input, or
/// leaves it waiting. Keeps what changed in `uow`.
///
/// # Errors
/// A store failure, or an illegal move (a bug: the caller checked the task
/// awaits release).
pub(crate) async fn decide(
    tx: &mut WriteTx,
    uow: &mut UnitOfWork,
    cfg: &AppConfig,
    mut task: Task,
    dependencies: &[(TaskId, TaskState)],
    now: i64,
) -> Result<Released, AppError> {
    let states = dependencies
        .iter()
        .map(|(dep, state)| uow.task(*dep).map_or(*state, Task::state));
    match readiness(task.on_dependency_failure, states) {
        Readiness::Wait => Ok(Released::Waiting),
        Readiness::Skip => {
            task.skip(now)?;
            uow.keep(&task, true);
            Ok(Released::Ended)
        }
        Readiness::Dispatch if is_paused(tx, uow, task.workflow_id).await? => {
            // Stays waiting, with the pause named in `blocked_by`; a resume
            // releases it.
            Ok(Released::Waiting)
        }
        Readiness::Dispatch => {
            match resolve(tx, uow, &task, dependencies, cfg.max_input_bytes).await? {
                Ok(resolved) => {
                    if resolved.is_some() {
                        task.resolved_inputs = resolved;
                    }
                    if task.is_group() {
                        return group::open(tx, uow, cfg, task, now).await;
                    }
                    if task.server_id.is_empty()
                        && let Some(target) = &mut task.target
                    {
                        // Mode `any`: one server, chosen now.
                        match group::choose_any(tx, cfg, &target.labels, None, now).await? {
                            Some(server) => {
                                target.servers = Some(vec![server.clone()]);
                                task.server_id = server;
                            }
                            None => {
                                let error = group::NO_MATCH.to_owned();
                                return fail(uow, task, error, now);
                            }
                        }
                    }
                    if task.is_gate() {
                        // An approval gate goes to a person, not a queue: it
                        // runs until approved, rejected or timed out.
                        task.dispatch(now)?;
                        task.heartbeat(now)?;
                        uow.keep(&task, true);
                        return Ok(Released::Dispatched);
                    }
                    // A retry held by a pause keeps its due time.
                    let at = task.next_attempt_at.unwrap_or(now).max(now);
                    task.dispatch_at(now, at)?;
                    uow.keep(&task, false);
                    uow.publish(&task, at);
                    Ok(Released::Dispatched)
                }
                Err(error) => fail(uow, task, error, now),
            }
        }
    }
}

/// Fails `task` at its release, unpublished, with `error` as its result.
pub(crate) fn fail(
    uow: &mut UnitOfWork,
    mut task: Task,
    error: String,
    now: i64,
) -> Result<Released, AppError> {
    let result = TaskResult::error(task.attempt as u32, error);
    uow.keep_result(&mut task, &result, now)?;
    task.finish(TaskState::Failed, now)?;
    uow.keep(&task, true);
    Ok(Released::Ended)
}

/// Whether `workflow` is paused: as the use case read it under the
/// workflow's lock, else read now (and remembered for the transaction).
///
/// # Errors
/// A store failure.
pub(crate) async fn is_paused(
    tx: &mut WriteTx,
    uow: &mut UnitOfWork,
    workflow: WorkflowId,
) -> Result<bool, AppError> {
    if let Some(paused) = uow.paused(workflow) {
        return Ok(paused);
    }
    let paused = !tx.paused_workflows(&[workflow]).await?.is_empty();
    uow.note_paused(workflow, paused);
    Ok(paused)
}

/// The values of `task`'s input references, from its producers as they
/// are now (the unit of work's version first; a producer that ended in
/// this transaction is found among `dependencies` without a query, the
/// others are read): `Ok(None)` when it has none,
/// `Ok(Some(json))` for `resolved_inputs`, `Err(why)` when one cannot be
/// resolved (the producer did not succeed, its result lacks the output, or
/// the value is too large). Never an empty value in a missing one's place.
async fn resolve(
    tx: &mut WriteTx,
    uow: &UnitOfWork,
    task: &Task,
    dependencies: &[(TaskId, TaskState)],
    max_input_bytes: usize,
) -> Result<Result<Option<String>, String>, AppError> {
    if task.parent_id.is_some() {
        // A group's child has its group's values.
        return Ok(Ok(task.resolved_inputs.clone()));
    }
    if !may_hold_refs(&task.inputs) {
        return Ok(Ok(None));
    }
    let refs = match input_refs(&task.inputs()?) {
        Ok(refs) if refs.is_empty() => return Ok(Ok(None)),
        Ok(refs) => refs,
        Err(e) => return Ok(Err(e)),
    };
    let mut resolved = Map::new();
    for (name, r) in refs {
        let known = dependencies
            .iter()
            .filter_map(|(dep, _)| uow.task(*dep))
            .find(|p| p.name == r.task || p.id.to_string() == r.task)
            .cloned();
        let producer = match known {
            Some(p) => p,
            None => match tx.task_by_ref(task.workflow_id, &r.task).await? {
                Some(p) => uow.task(p.id).cloned().unwrap_or(p),
                None => return Ok(Err(format!("unresolved input {name}: {r}"))),
            },
        };
        let result = match producer.state() {
            TaskState::Succeeded => TaskResult::of_task(&producer)?,
            _ => None,
        };
        // A secret output's value is kept sealed, and copied so: the
        // entry's flag tells the relay to open it for the worker.
        let secret = producer
            .outputs()?
            .iter()
            .any(|o| o.secret && o.name == r.output);
        let value = result.and_then(|res| {
            output_value(
                &r.output,
                &res.outputs,
                &res.stdout,
                &res.stderr,
                res.exit_code,
            )
        });
        let Some(value) = value else {
            return Ok(Err(format!("unresolved input {name}: {r}")));
        };
        let size = serde_json::to_string(&value).map_or(0, |v| v.len());
        if size > max_input_bytes {
            return Ok(Err(format!(
                "input {name}: {r} resolved to {size} bytes, more than dispatch.max_input_bytes ({max_input_bytes})"
            )));
        }
        let mut entry = json!({
            "value": value,
            "from": {
                "task": producer.name,
                "task_id": producer.id,
                "output": r.output,
                "attempt": producer.attempt,
            },
        });
        if secret && let Value::Object(e) = &mut entry {
            e.insert(SECRET.to_owned(), Value::Bool(true));
        }
        resolved.insert(name, entry);
    }
    Ok(Ok(Some(Value::Object(resolved).to_string())))
}

/// The release walk from the tasks in `frontier` (just ended): one query
/// per level reads their dependents with their dependencies' states; states
/// the unit of work changed are taken from it, so nothing needs writing
/// before the walk.
///
/// # Errors
/// A store failure, or an illegal move (a bug).
pub(crate) async fn walk(
    tx: &mut WriteTx,
    uow: &mut UnitOfWork,
    cfg: &AppConfig,
    mut frontier: Vec<TaskId>,
    now: i64,
) -> Result<(), AppError> {
    while !frontier.is_empty() {
        let found = tx.dependents_many(&frontier).await?;
        // The groups of children that ended: one may release its next
        // children, or end (its dependents are walked next).
        let groups: BTreeSet<TaskId> = frontier
            .iter()
            .filter_map(|id| uow.task(*id).and_then(|t| t.parent_id))
            .collect();
        frontier.clear();
        for g in groups {
            if group::progress(tx, uow, cfg, g, true, now).await? {
                frontier.push(g);
            }
        }
        for (row, dependencies) in found {
            let task = uow.task(row.id).cloned().unwrap_or(row);
            if !task.awaits_release() {
                continue;
            }
            let id = task.id;
            if decide(tx, uow, cfg, task, &dependencies, now).await? == Released::Ended {
                frontier.push(id);
            }
        }
    }
    Ok(())
}

/// Applies the release rule to one task given its dependencies as (id,
/// state) from the store (states the unit of work changed win), and walks
/// on if it was skipped. A task that does not await release is kept as it
/// is.
///
/// # Errors
/// A store failure, or an illegal move (a bug).
pub(crate) async fn evaluate(
    tx: &mut WriteTx,
    uow: &mut UnitOfWork,
    cfg: &AppConfig,
    task: Task,
    dependencies: Vec<(TaskId, TaskState)>,
    now: i64,
) -> Result<(), AppError> {
    if !task.awaits_release() {
        uow.keep(&task, false);
        return Ok(());
    }
    let id = task.id;
    match decide(tx, uow, cfg, task.clone(), &dependencies, now).await? {
        Released::Ended => walk(tx, uow, cfg, vec![id], now).await,
        Released::Waiting => {
            uow.keep(&task, false);
            Ok(())
        }
        Released::Dispatched => Ok(()),
    }
}
