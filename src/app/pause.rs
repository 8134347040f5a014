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
use crate::domain::{TaskId, TaskState, WorkflowId};

impl App {
    /// Pauses a workflow.
    ///
    /// # Errors
    /// Unknown workflow (404); a cancelled or paused one (409).
    #[instrument(skip_all, fields(workflow_id = %workflow))]
    pub async fn pause_workflow(&self, workflow: WorkflowId) -> Result<(), AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let mut wf = locked_workflow(&mut tx, workflow).await?;
        refuse_cancelled(&wf)?;
        if !wf.pause(now) {
            return Err(AppError::conflict(
                "workflow_paused",
                format!("workflow {workflow} is paused already"),
            ));
        }
        let mut uow = UnitOfWork::default();
        uow.workflow_event(workflow, "paused");
        uow.change_workflow(wf);
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
        let mut wf = locked_workflow(&mut tx, workflow).await?;
        refuse_cancelled(&wf)?;
        if !wf.resume(now) {
            return Err(AppError::conflict(
                "workflow_not_paused",
                format!("workflow {workflow} is not paused"),
            ));
        }
        let mut uow = UnitOfWork::default();
        uow.workflow_event(workflow, "resumed");
        uow.change_workflow(wf);
        let graph = WorkflowGraph::read(&mut tx, workflow).await?;
        // A group's children are released by its batch, not by the rule.
        let ready: Vec<TaskId> = graph
            .order
            .iter()
            .filter(|id| {
                graph
                    .tasks
                    .get(id)
                    .is_some_and(|t| t.awaits_release() && t.parent_id.is_none())
            })
            .copied()
            .collect();
        graph
            .release(&mut tx, &mut uow, &self.config, &ready, now)
            .await?;
        let open_groups: Vec<TaskId> = graph
            .order
            .iter()
            .filter(|id| {
                graph
                    .tasks
                    .get(id)
                    .is_some_and(|t| t.is_group() && t.state() == TaskState::Running)
            })
            .copied()
            .collect();
        for g in open_groups {
            group::progress(&mut tx, &mut uow, &self.config, g, false, now).await?;
        }
        self.commit(tx, uow, now).await?;
        Ok(())
    }
}
