//! Pausing and resuming a workflow (SPEC 7.3). While paused nothing more
//! of it is published: retries waiting for their delay are taken back, and
//! the release rule and retries hold what becomes ready. Tasks already
//! queued or running go on, and so does a message already due (it is on its
//! way). A resume releases what became ready.

use tracing::instrument;

use super::group;
use super::rerun::{WorkflowGraph, refuse_cancelled};
use super::unit::UnitOfWork;
use super::{App, AppError, locked_workflow, now_us};
use crate::domain::{TaskState, WorkflowId};
use crate::store::WriteTx;

impl App {
    /// Pauses a workflow.
    ///
    /// # Errors
    /// Unknown workflow (404); a cancelled or paused one (409).
    #[instrument(skip_all, fields(workflow_id = %workflow))]
    pub async fn pause_workflow(&self, workflow: WorkflowId) -> Result<(), AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let mut uow = set_paused(&mut tx, workflow, true, now).await?;
        for mut task in tx.unfinished_tasks(Some(workflow), None).await? {
            // A retry waiting for its delay has not left: it is taken back
            // (the relay sends a message only once it is due). One that is
            // due is on its way, as good as queued.
            if task.next_attempt_at.is_some_and(|at| at > now) && task.withdraw(now) {
                uow.keep(&task, false);
                uow.drop_publishes(task.id);
            }
        }
        self.commit(tx, uow, now).await?;
        Ok(())
    }

    /// Resumes a paused workflow: what became ready while it was paused is
    /// released (a held retry keeps its due time).
    ///
    /// # Errors
    /// Unknown workflow (404); a cancelled one, or one not paused (409).
    #[instrument(skip_all, fields(workflow_id = %workflow))]
    pub async fn resume_workflow(&self, workflow: WorkflowId) -> Result<(), AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let mut uow = set_paused(&mut tx, workflow, false, now).await?;
        let graph = WorkflowGraph::read(&mut tx, workflow).await?;
        // A group's children are released by its batch, not by the rule.
        let ready = graph.ids_where(|t| t.awaits_release() && t.parent_id.is_none());
        graph
            .release(&mut tx, &mut uow, &self.config, &ready, now)
            .await?;
        for g in graph.ids_where(|t| t.is_group() && t.state() == TaskState::Running) {
            group::progress(&mut tx, &mut uow, &self.config, g, false, now).await?;
        }
        self.commit(tx, uow, now).await?;
        Ok(())
    }
}

/// Locks `workflow` and sets its pause flag to `paused`, with the event
/// (`paused` or `resumed`) in the unit of work it returns.
///
/// # Errors
/// Unknown workflow (404); a cancelled one, or one whose flag is already
/// so (409 `workflow_paused`, `workflow_not_paused`).
async fn set_paused(
    tx: &mut WriteTx,
    workflow: WorkflowId,
    paused: bool,
    now: i64,
) -> Result<UnitOfWork, AppError> {
    let mut wf = locked_workflow(tx, workflow).await?;
    refuse_cancelled(&wf)?;
    let (changed, event, code, is) = if paused {
        (wf.pause(now), "paused", "workflow_paused", "paused already")
    } else {
        (
            wf.resume(now),
            "resumed",
            "workflow_not_paused",
            "not paused",
        )
    };
    if !changed {
        return Err(AppError::conflict(
            code,
            format!("workflow {workflow} is {is}"),
        ));
    }
    let mut uow = UnitOfWork::default();
    uow.workflow_event(workflow, event);
    uow.change_workflow(wf);
    Ok(uow)
}
