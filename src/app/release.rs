//! The release: what a task waiting for its dependencies does when one of
//! them ends (or when it is created or changed), applied in memory through
//! the unit of work. [`walk`] is the one release walk: after any end (a
//! result, a cancel, a lost worker, a timeout) it dispatches the dependents
//! whose dependencies are all satisfied, skips those that can no longer
//! run, and goes on down the graph from the skipped ones.

use crate::domain::{Readiness, Task, TaskId, TaskState, readiness};
use crate::store::WriteTx;

use super::AppError;
use super::unit::UnitOfWork;

/// Applies the release rule to `task` (which awaits release) given its
/// dependencies' states: dispatches its first attempt, skips it, or leaves
/// it waiting. Keeps what changed in `uow`.
///
/// # Errors
/// An illegal move (a bug: the caller checked the task awaits release).
pub(crate) fn decide(
    uow: &mut UnitOfWork,
    mut task: Task,
    dependencies: impl IntoIterator<Item = TaskState>,
    now: i64,
) -> Result<Readiness, AppError> {
    let r = readiness(task.on_dependency_failure, dependencies);
    match r {
        Readiness::Wait => {}
        Readiness::Skip => {
            task.skip(now)?;
            uow.keep(&task, true);
        }
        Readiness::Dispatch => {
            task.dispatch(now)?;
            uow.keep(&task, false);
            uow.publish(&task, now);
        }
    }
    Ok(r)
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
    mut frontier: Vec<TaskId>,
    now: i64,
) -> Result<(), AppError> {
    while !frontier.is_empty() {
        let found = tx.dependents_many(&frontier).await?;
        frontier.clear();
        for (row, dependencies) in found {
            let task = uow.task(row.id).cloned().unwrap_or(row);
            if !task.awaits_release() {
                continue;
            }
            let id = task.id;
            let states: Vec<TaskState> = dependencies
                .iter()
                .map(|(dep, state)| uow.task(*dep).map_or(*state, Task::state))
                .collect();
            if decide(uow, task, states, now)? == Readiness::Skip {
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
    task: Task,
    dependencies: Vec<(TaskId, TaskState)>,
    now: i64,
) -> Result<(), AppError> {
    if !task.awaits_release() {
        uow.keep(&task, false);
        return Ok(());
    }
    let id = task.id;
    let states: Vec<TaskState> = dependencies
        .into_iter()
        .map(|(dep, state)| uow.task(dep).map_or(state, Task::state))
        .collect();
    match decide(uow, task.clone(), states, now)? {
        Readiness::Skip => walk(tx, uow, vec![id], now).await,
        Readiness::Wait => {
            uow.keep(&task, false);
            Ok(())
        }
        Readiness::Dispatch => Ok(()),
    }
}
