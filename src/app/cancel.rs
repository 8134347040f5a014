//! Cancelling: one task (its dependents are released as after any
//! unsuccessful end), a whole workflow (it takes no new tasks), and the
//! deletion of a workflow (cancelled first, so workers are told).

use tracing::instrument;

use super::release::walk;
use super::unit::UnitOfWork;
use super::{App, AppError, locked_workflow, now_us};
use crate::domain::{Task, TaskState, WorkflowId};
use crate::store::WriteTx;

/// Cancels a task that has not ended. Workers that may hold the current
/// attempt are told; a message not yet confirmed is dropped.
pub(super) fn cancel(uow: &mut UnitOfWork, mut task: Task, now: i64) -> Result<Task, AppError> {
    task.finish(TaskState::Cancelled, now)?;
    uow.keep(&task, true);
    if task.attempt > 0 && !task.runs_nowhere() {
        uow.drop_publishes(task.id);
        // The publish may be in flight right now: always tell the worker.
        uow.tell_cancel(&task, now);
    }
    Ok(task)
}

impl App {
    /// Cancels every unfinished task and marks the workflow cancelled.
    ///
    /// # Errors
    /// Unknown workflow (404).
    #[instrument(skip_all, fields(workflow_id = %workflow))]
    pub async fn cancel_workflow(&self, workflow: WorkflowId) -> Result<(), AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let mut uow = UnitOfWork::default();
        cancel_all(&mut tx, &mut uow, workflow, now).await?;
        self.commit(tx, uow, now).await?;
        Ok(())
    }

    /// Cancels every unfinished task (workers are told), then deletes the workflow.
    ///
    /// # Errors
    /// Unknown workflow (404).
    #[instrument(skip_all, fields(workflow_id = %workflow))]
    pub async fn delete_workflow(&self, workflow: WorkflowId) -> Result<(), AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let mut uow = UnitOfWork::default();
        cancel_all(&mut tx, &mut uow, workflow, now).await?;
        uow.delete_workflow(workflow);
        self.commit(tx, uow, now).await?;
        Ok(())
    }

    /// Cancels one task; deletes it if it was never handed to the broker.
    /// Its dependents are skipped or released as for any unsuccessful end.
    ///
    /// # Errors
    /// Unknown workflow or task (404), task already finished (409).
    #[instrument(skip_all, fields(workflow_id = %workflow, task_id))]
    pub async fn cancel_task(&self, workflow: WorkflowId, reference: &str) -> Result<(), AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let wf = locked_workflow(&mut tx, workflow).await?;
        let task = tx
            .task_by_ref(workflow, reference)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("task {reference:?} not found")))?;
        tracing::Span::current().record("task_id", tracing::field::display(task.id));
        if task.state().is_terminal() {
            return Err(AppError::conflict(
                "task_finished",
                format!("task {:?} already ended ({})", task.name, task.state()),
            ));
        }
        let mut uow = UnitOfWork::default();
        uow.note_paused(wf.id, wf.paused);
        let task = cancel(&mut uow, task, now)?;
        let mut ended = vec![task.id];
        if task.is_group() {
            // Cancelling a group cancels its unfinished children.
            for child in tx.children_of(task.id).await? {
                if !child.state().is_terminal() {
                    ended.push(cancel(&mut uow, child, now)?.id);
                }
            }
        }
        walk(&mut tx, &mut uow, &self.config, ended, now).await?;
        if task.attempt == 0 {
            uow.delete_task(task.id);
        }
        self.commit(tx, uow, now).await?;
        Ok(())
    }
}

/// Marks the workflow cancelled (an event) and cancels every unfinished
/// task: nothing is left to release.
async fn cancel_all(
    tx: &mut WriteTx,
    uow: &mut UnitOfWork,
    workflow: WorkflowId,
    now: i64,
) -> Result<(), AppError> {
    let mut wf = locked_workflow(tx, workflow).await?;
    if wf.cancel(now) {
        uow.workflow_event(workflow, "cancelled");
        uow.change_workflow(wf);
    }
    for task in tx.unfinished_tasks(Some(workflow), None).await? {
        cancel(uow, task, now)?;
    }
    Ok(())
}
